"""Reward combinators (``rewards/combinators.py``): constraints and weighted sums, their checks, and
errors that name the failing part."""

from __future__ import annotations

import math

import numpy as np
import pytest

import bayes_rlhf as br
from tests.rewards.conftest import picky


def test_constraint_and_weighted_sum(gpt2_lm, batch):
    ids, mask = batch
    short = br.Constraint(lambda p, c: [len(x.split()) <= 2 for x in c], name="short")
    length = br.TokenReward(lambda i, m: m.sum(-1).double(), name="length")
    total = br.WeightedSum([(1.0, short), (0.5, length)])
    out = br.evaluate_reward(total, gpt2_lm, ["w0"] * 3, ids, mask)
    assert out.tolist() == [1.0, 0.5, -math.inf]
    assert "short" in total.name and "length" in total.name


def test_combinators_name_the_failing_part(gpt2_lm, batch):
    total = br.WeightedSum([(1.0, br.TokenReward(lambda i, m: m.sum(-1).double(), name="length")), (2.0, picky)])
    with pytest.raises(br.RewardError, match="'picky'.*completion 1 'w2'") as err:
        br.evaluate_reward(total, gpt2_lm, ["w0"] * 3, *batch)
    assert isinstance(err.value.__cause__, ValueError)
    broken = br.Constraint(lambda p, c: 1 / 0, name="broken_rule")
    with pytest.raises(br.RewardError, match="'broken_rule' raised ZeroDivisionError.*completion 0 'w0 w1'"):
        br.evaluate_reward(broken, gpt2_lm, ["w0"] * 3, *batch)


def test_object_arrays_and_bad_weights(gpt2_lm, batch):
    with pytest.raises(br.RewardError, match="dtype object"):
        br.evaluate_reward(lambda p, c: np.array([1.0, None, 2.0], dtype=object), gpt2_lm, ["w0"] * 3, *batch)
    length = br.TokenReward(lambda i, m: m.sum(-1).double(), name="length")
    for w in ("2", True, float("nan")):
        with pytest.raises(br.RewardError, match="WeightedSum weights"):
            br.WeightedSum([(w, length)])
    a = br.evaluate_reward(br.WeightedSum([(np.float32(0.5), length)]), gpt2_lm, ["w0"] * 3, *batch)
    assert a.tolist() == [1.0, 0.5, 1.5]
