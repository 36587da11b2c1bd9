"""Shared pieces of the reward tests: a batch of three completions and a reward that fails on one word."""

from __future__ import annotations

import pytest


@pytest.fixture
def batch(gpt2_lm):
    """Three completions of the tiny GPT-2 (ids, mask): "w0 w1", "w2", "w0 w0 w0"."""
    return gpt2_lm.encode_completions(["w0 w1", "w2", "w0 w0 w0"], 3)


def picky(p, c):
    """A text reward that cannot score the word w2."""
    if any("w2" in x for x in c):
        raise ValueError("cannot score w2")
    return [1.0] * len(c)
