"""The embedded default model: a tiny word-level GPT-2 trained on short reviews.

The model (``default/``) is trained by ``python -m bayes_rlhf.models.train_default`` on a
corpus that script generates from a small grammar, so it is reproducible. Its 21 words include
the sentiment lexicon below (``POSITIVE``, ``NEGATIVE`` and the negation ``NEGATION``), which
``bayes_rlhf.rewards.sentiment`` scores; ``DEFAULT_PROMPTS`` are openings of its grammar. The
demo target built on it (reward, beta, T) is ``bayes_rlhf.demo``; this module knows no reward.
"""

from __future__ import annotations

from pathlib import Path

from bayes_rlhf.models.causal_lm import CausalLM

DEFAULT_DIR = Path(__file__).parent / "default"
DEFAULT_PROMPTS = ("the movie was", "the food is", "")

POSITIVE = ("great", "good", "fun", "lovely")
NEGATIVE = ("bad", "awful", "boring", "dull")
NEGATION = "not"


def default_lm(device=None, dtype=None) -> CausalLM:
    """The embedded model as a ``CausalLM`` (``bayes_rlhf.default_model`` adds its reward)."""
    return CausalLM.from_pretrained(DEFAULT_DIR, device=device, dtype=dtype)
