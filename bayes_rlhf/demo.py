"""The demo target: the embedded default model, its sentiment reward, beta and T, ready to use.

Above ``models`` (the embedded model, ``models.default_model``) and ``rewards`` (its sentiment
reward, ``rewards.sentiment``), so neither needs the other; every command takes its defaults
from here (``--model default --reward sentiment --beta 1 --max-new-tokens 4`` and the demo
prompts), and ``bayes-rlhf demo`` runs on ``demo_target()``::

    target = demo_target()                    # Target(default_lm(), sentiment, beta=1.0, T=4)
    post = exact_posterior(target, DEFAULT_PROMPTS[0])

With 21 words and T = 4 the posterior of each demo prompt is enumerable exactly in seconds on a CPU.
"""

from __future__ import annotations

from bayes_rlhf.models.causal_lm import CausalLM
from bayes_rlhf.models.default_model import DEFAULT_DIR, DEFAULT_PROMPTS, default_lm
from bayes_rlhf.rewards.base import TokenReward
from bayes_rlhf.rewards.sentiment import sentiment_reward
from bayes_rlhf.target import Target

__all__ = ["demo_target", "default_model", "DEFAULT_MODEL", "DEFAULT_REWARD", "DEFAULT_BETA",
           "DEFAULT_MAX_NEW_TOKENS", "DEFAULT_PROMPTS", "DEFAULT_DIR"]

DEFAULT_MODEL = "default"  # the --model value naming the embedded model (DEFAULT_DIR)
DEFAULT_REWARD = "sentiment"  # the reward spec of sentiment_reward (bayes_rlhf.rewards.spec)
DEFAULT_BETA = 1.0
DEFAULT_MAX_NEW_TOKENS = 4


def default_model(device=None, dtype=None) -> tuple[CausalLM, TokenReward]:
    """The embedded demo model (a ``CausalLM``) and its sentiment reward."""
    lm = default_lm(device=device, dtype=dtype)
    return lm, sentiment_reward(lm)


def demo_target(beta: float = DEFAULT_BETA, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, *,
                device=None, dtype=None) -> Target:
    """``Target(prior, reward, beta, max_new_tokens)`` of the embedded model and its sentiment reward.

    Parameters
    ----------
    beta : float
        KL coefficient, > 0 (``Target`` checks it).
    max_new_tokens : int
        T: completions end at EOS or after T tokens.
    device, dtype : optional
        Where and in what precision to load the model (as ``CausalLM.from_pretrained``).
    """
    lm, reward = default_model(device=device, dtype=dtype)
    return Target(lm, reward, beta, max_new_tokens)
