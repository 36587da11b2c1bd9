"""Fixtures for the sampler tests: mildly tilted targets whose weights have small variance."""

from __future__ import annotations

import pytest
import torch

import bayes_rlhf as br
from tests.conftest import first_word_reward


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (two threads thrash on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def mild_target(gpt2_lm):
    """beta = 1.5: the prior-proposal weights have relative variance ~1.4, so small N suffices."""
    return br.Target(prior=gpt2_lm, reward=first_word_reward(), beta=1.5, max_new_tokens=4)


@pytest.fixture(scope="session")
def mild_post(mild_target):
    return br.exact_posterior(mild_target, "w1 w2")


@pytest.fixture(scope="session")
def short_target(gpt2_lm):
    """T = 2 (57 completions): small enough to enumerate tuples of completions by brute force."""
    return br.Target(prior=gpt2_lm, reward=first_word_reward(), beta=1.0, max_new_tokens=2)


@pytest.fixture(scope="session")
def short_post(short_target):
    return br.exact_posterior(short_target, "w1 w2")


@pytest.fixture(scope="session")
def other_policy():
    """A different random GPT-2 with the same tokenizer (vocab 8): a proposal that is not the prior."""
    from bayes_rlhf.models.toy import tiny_lm

    return tiny_lm("gpt2", vocab_size=8, seed=3)
