"""The log-weight arithmetic of ``bayes_rlhf.logweights``: exact values, and one behaviour on no mass."""

from __future__ import annotations

import math

import pytest
import torch

from bayes_rlhf.errors import ConfigError
from bayes_rlhf.logweights import (EmptySamplesError, group_softmax, kish_ess, log_mean_exp, normalized_log_weights,
                                   normalized_weights)

INF = math.inf


def test_log_mean_exp_is_the_log_of_the_mean_weight():
    w = torch.tensor([1.0, 2.0, 5.0, 0.0], dtype=torch.float64)
    assert float(log_mean_exp(w.log())) == pytest.approx(math.log(2.0), rel=1e-14)
    rows = torch.stack([w.log(), w.log() + 700.0])  # no overflow far from 0
    torch.testing.assert_close(log_mean_exp(rows, dim=1), torch.tensor([math.log(2.0), math.log(2.0) + 700.0],
                                                                       dtype=torch.float64), rtol=1e-14, atol=0)
    assert float(log_mean_exp(torch.full((3,), -INF))) == -INF


def test_normalisation_and_kish_ess_exact_values():
    lw = torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64).log()
    torch.testing.assert_close(normalized_weights(lw), torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64))
    assert kish_ess(lw) == pytest.approx(1 / (0.25 ** 2 * 2 + 0.5 ** 2), rel=1e-14)
    assert kish_ess(torch.tensor([0.0, -INF])) == pytest.approx(1.0)


def test_no_mass_has_one_behaviour():
    none = torch.full((4,), -INF, dtype=torch.float64)
    assert kish_ess(none) == 0.0
    assert bool((normalized_log_weights(none) == -INF).all())
    assert torch.equal(normalized_weights(none), torch.zeros(4, dtype=torch.float64))
    w = group_softmax(torch.tensor([0.0, -INF, -INF, -INF], dtype=torch.float64), torch.tensor([0, 0, 1, 1]))
    assert torch.equal(w, torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64))


def test_bad_input_is_refused():
    with pytest.raises(EmptySamplesError):
        kish_ess(torch.zeros(0))
    for bad in (math.nan, INF):
        with pytest.raises(ConfigError, match="NaN or \\+inf"):
            kish_ess(torch.tensor([0.0, bad]))


def test_group_softmax_normalises_each_group_and_column():
    lw = torch.tensor([[0.0, 1.0], [math.log(3.0), -INF], [5.0, 2.0], [5.0, -INF], [5.0, -INF]],
                      dtype=torch.float64)
    group = torch.tensor([0, 0, 1, 1, 1])
    w = group_softmax(lw, group)
    expect = torch.tensor([[0.25, 1.0], [0.75, 0.0], [1 / 3, 1.0], [1 / 3, 0.0], [1 / 3, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(w, expect, rtol=1e-14, atol=0)
    # a 1-D column gives the same as its column of the 2-D call, and num_groups may add empty groups
    torch.testing.assert_close(group_softmax(lw[:, 0], group, num_groups=3), expect[:, 0], rtol=1e-14, atol=0)


def test_every_export_is_the_one_function():
    import bayes_rlhf.diagnostics as diagnostics
    import bayes_rlhf.logweights as lw
    import bayes_rlhf.samplers as samplers
    from bayes_rlhf.diagnostics import weights

    assert samplers.kish_ess is diagnostics.kish_ess is lw.kish_ess
    assert weights.normalized_weights is lw.normalized_weights and weights.EmptySamplesError is lw.EmptySamplesError
    assert diagnostics.kish_ess(torch.full((2,), -INF)) == 0.0  # the diagnostics' name: the same behaviour
