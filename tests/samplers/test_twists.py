"""Twists (samplers/twists.py): the exact twist from soft values, prefix potentials."""

from __future__ import annotations

import pytest
import torch

from bayes_rlhf.errors import ConfigError
from bayes_rlhf.samplers import ExactTwist, PrefixPotential
from tests.conftest import first_word_reward

PROMPT = "w1 w2"


def test_exact_and_prefix_twists(mild_target, mild_post):
    ids = torch.tensor([[3, 4], [5, 5]])
    tw = ExactTwist(mild_post)
    got = tw.log_potential([PROMPT, PROMPT], ids, mild_target)
    want = torch.tensor([mild_post.soft_value([3, 4]), mild_post.soft_value([5, 5])]) / mild_post.beta
    assert torch.allclose(got, want.double(), atol=1e-12)
    pp = PrefixPotential(first_word_reward(), scale=0.5)
    assert torch.allclose(pp.log_potential([PROMPT] * 2, ids, mild_target),
                          0.5 * torch.tensor([2.0 - 1.0, -1.0], dtype=torch.float64) / mild_target.beta)
    with pytest.raises(ConfigError):
        PrefixPotential(3)
