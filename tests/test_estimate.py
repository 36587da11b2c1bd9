"""The one Estimate type: sampled divergences and the bounds on log Z return the same class."""

from __future__ import annotations

import math

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.diagnostics import Estimate as DiagnosticsEstimate
from bayes_rlhf.estimate import Estimate
from bayes_rlhf.samplers import BoundEstimate, lower_bound
from tests.conftest import first_word_reward


def test_one_type_under_every_name():
    assert BoundEstimate is Estimate is DiagnosticsEstimate is br.Estimate


def test_of_terms_mean_stderr_and_side():
    e = Estimate.of_terms(torch.tensor([1.0, 2.0, 3.0, 6.0]), "lower")
    # mean 3, sample std sqrt(14 / 3), se = std / sqrt(4)
    assert e.value == 3.0 and e.num_samples == 4 and e.side == "lower"
    assert math.isclose(e.stderr, math.sqrt(14 / 3) / 2, rel_tol=1e-12)
    assert Estimate.of_terms(torch.tensor([2.0])).stderr == math.inf
    assert e.as_dict() == {"value": 3.0, "stderr": e.stderr, "num_samples": 4, "side": "lower"}
    lo, hi = e.interval(2.0)
    assert math.isclose(lo, 3.0 - 2 * e.stderr) and math.isclose(hi, 3.0 + 2 * e.stderr)


def test_bounds_return_the_unified_type_and_num_is_deprecated(gpt2_lm):
    mild_target = br.Target(prior=gpt2_lm, reward=first_word_reward(), beta=1.5, max_new_tokens=4)
    est = lower_bound(mild_target, "w1 w2", 8, generator=torch.Generator().manual_seed(0))
    assert isinstance(est, Estimate) and est.side == "lower" and est.num_samples == 8
    assert est.interval()[0] < est.value < est.interval()[1]
    with pytest.warns(DeprecationWarning, match="num_samples"):
        assert est.num == 8
    # built by hand with the old positional order (value, stderr, num, side)
    assert BoundEstimate(1.0, 0.1, 5, "upper") == Estimate(1.0, 0.1, num_samples=5, side="upper")
