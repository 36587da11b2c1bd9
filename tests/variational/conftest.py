"""Tiny enumerable targets for the variational tests (vocab 6: pad, BOS, EOS and 3 words; T = 3)."""

from __future__ import annotations

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.models.toy import tiny_lm
from bayes_rlhf.variational import TrainerConfig


def word_reward(word_id: int = 3, weight: float = 1.5) -> br.TokenReward:
    """weight * (occurrences of ``word_id``) - 0.3 * length."""

    def fn(ids, mask):
        return weight * ((ids == word_id) & mask).sum(-1).double() - 0.3 * mask.sum(-1).double()

    return br.TokenReward(fn, name="word_count")


@pytest.fixture(scope="session")
def small_target():
    lm = tiny_lm("gpt2", vocab_size=6, seed=3, hidden=16)
    return br.Target(prior=lm, reward=word_reward(), beta=0.5, max_new_tokens=3)


@pytest.fixture(scope="session")
def small_posts(small_target):
    return {p: br.exact_posterior(small_target, p) for p in ("w0", "w1 w2")}


@pytest.fixture(scope="module")
def post(small_target):
    """The exact posterior of "w0" (test_preferences.py and objectives/test_dpo.py)."""
    return br.exact_posterior(small_target, "w0")


def kl(lq: torch.Tensor, lp: torch.Tensor) -> float:
    """KL(q || p) of two tables of log-probs (q's zeros add nothing)."""
    q = lq.exp()
    pos = q > 0
    return float((q[pos] * (lq[pos] - lp[pos])).sum())


@pytest.fixture
def fast_config():
    """A config for short runs: small batches, no progress bar."""
    def make(**kw):
        base = dict(steps=10, samples_per_prompt=8, lr=3e-3, progress=False, eval_every=1000)
        base.update(kw)
        return TrainerConfig(**base)
    return make


@pytest.fixture(scope="session")
def default_target():
    """The default model at beta 1, T = 4, and the exact posterior of "the movie was" (enumerated once)."""
    lm, reward = br.default_model()
    target = br.Target(prior=lm, reward=reward, beta=1.0, max_new_tokens=4)
    return target, br.exact_posterior(target, "the movie was")
