"""The lexicon sentiment reward of the embedded default model (reward spec ``sentiment``).

    r(x) = sum_t s(x_t) * (-1 if x_{t-1} = "not" else +1),   s = +1 positive word, -1 negative, 0 else

The words are the model's (``bayes_rlhf.models.default_model``); ``parse_reward("sentiment", lm)``
refuses a tokenizer without them.
"""

from __future__ import annotations

import torch

from bayes_rlhf.models.default_model import NEGATION, NEGATIVE, POSITIVE
from bayes_rlhf.rewards.base import TokenReward


def sentiment_reward(lm) -> TokenReward:
    """The default model's reward as a ``TokenReward``: lexicon sentiment of the completion.

    ``lm`` is the prior (a ``CausalLM``) whose tokenizer holds the lexicon words.
    """
    vocab = lm.tokenizer.get_vocab()
    polarity = torch.zeros(lm.vocab_size, dtype=torch.float64)
    for w in POSITIVE:
        polarity[vocab[w]] = 1.0
    for w in NEGATIVE:
        polarity[vocab[w]] = -1.0
    neg_id = vocab[NEGATION]

    def sentiment(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pol = polarity.to(ids.device)[ids] * mask
        negated = torch.zeros_like(mask)
        negated[:, 1:] = (ids[:, :-1] == neg_id) & mask[:, :-1]
        return torch.where(negated, -pol, pol).sum(-1)

    return TokenReward(sentiment, name="sentiment")
