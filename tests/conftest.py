"""Shared fixtures: tiny float64 models of two architectures, simple rewards, small targets."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import bayes_rlhf as br  # noqa: E402
from bayes_rlhf.models.toy import tiny_lm  # noqa: E402

torch.set_num_threads(int(os.environ.get("BAYES_RLHF_TEST_THREADS", "1")))  # tiny models: 1 thread is fastest


@pytest.fixture(scope="session")
def gpt2_lm():
    """Random tiny GPT-2, vocab 8 (5 words + pad/BOS/EOS), float64, CPU."""
    return tiny_lm("gpt2", vocab_size=8, seed=0)


@pytest.fixture(scope="session")
def llama_lm():
    """Random tiny Llama, vocab 8, float64, CPU."""
    return tiny_lm("llama", vocab_size=8, seed=1)


def first_word_reward(word_id: int = 3, weight: float = 2.0) -> br.TokenReward:
    """Token reward: weight * (number of times ``word_id`` occurs) - 0.5 * length."""

    def fn(ids, mask):
        return weight * ((ids == word_id) & mask).sum(-1).double() - 0.5 * mask.sum(-1).double()

    return br.TokenReward(fn, name="count_w0")


@pytest.fixture(scope="session")
def reward():
    return first_word_reward()


@pytest.fixture(scope="session")
def gpt2_target(gpt2_lm, reward):
    return br.Target(prior=gpt2_lm, reward=reward, beta=0.7, max_new_tokens=4)


@pytest.fixture(scope="session")
def gpt2_post(gpt2_target):
    return br.exact_posterior(gpt2_target, "w1 w2")


@pytest.fixture(scope="session")
def default():
    return br.default_model()
