"""Fixtures shared by the diagnostics tests."""

from __future__ import annotations

import pytest

import bayes_rlhf as br


@pytest.fixture(scope="module")
def short_post(gpt2_lm, reward):
    """The posterior of "w1 w2" with T = 3 (beta 0.7): small enough to walk per token."""
    return br.exact_posterior(br.Target(gpt2_lm, reward, 0.7, 3), "w1 w2")
