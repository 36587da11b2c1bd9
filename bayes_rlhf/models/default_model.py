"""The embedded default model: a tiny word-level GPT-2 trained on short reviews, and its reward.

The model (``default/``) is trained by ``python -m bayes_rlhf.models.train_default`` on a
corpus that script generates from a small grammar, so it is reproducible. Its reward is the
sentiment of the completion: +1 per positive word, -1 per negative word, with the sign flipped
after "not". With 21 words and ``DEFAULT_MAX_NEW_TOKENS`` = 4 the posterior of each demo
prompt is enumerable exactly in seconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bayes_rlhf.models.causal_lm import CausalLM

DEFAULT_DIR = Path(__file__).parent / "default"
DEFAULT_PROMPTS = ("the movie was", "the food is", "")
DEFAULT_BETA = 1.0
DEFAULT_MAX_NEW_TOKENS = 4

POSITIVE = ("great", "good", "fun", "lovely")
NEGATIVE = ("bad", "awful", "boring", "dull")
NEGATION = "not"


def sentiment_reward(lm: CausalLM):
    """The default model's reward as a ``TokenReward``: lexicon sentiment of the completion."""
    from bayes_rlhf.rewards import TokenReward

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


def default_model(device=None, dtype=None) -> tuple[CausalLM, object]:
    """The embedded demo model (a ``CausalLM``) and its sentiment reward."""
    lm = CausalLM.from_pretrained(DEFAULT_DIR, device=device, dtype=dtype)
    return lm, sentiment_reward(lm)
