"""Resampling schemes: correct support, unbiased offspring counts, the weighted mean preserved."""

from __future__ import annotations

import math

import pytest
import torch

from bayes_rlhf.errors import ConfigError, NoMassError
from bayes_rlhf.samplers import RESAMPLERS, get_resampler, residual, stratified, systematic

SCHEMES = sorted(RESAMPLERS)
LOG_W = torch.log(torch.tensor([0.05, 0.0, 0.3, 0.15, 0.0, 0.4, 0.1], dtype=torch.float64)) + 3.0


@pytest.mark.parametrize("scheme", SCHEMES)
def test_indices_valid_and_zero_weight_never_drawn(scheme):
    g = torch.Generator().manual_seed(0)
    for n in (1, 5, 64):
        idx = get_resampler(scheme)(LOG_W, n, generator=g)
        assert idx.shape == (n,) and idx.dtype == torch.long
        assert bool(((idx >= 0) & (idx < LOG_W.numel())).all())
        assert not bool(((idx == 1) | (idx == 4)).any())


@pytest.mark.parametrize("scheme", SCHEMES)
def test_preserves_weighted_mean(scheme):
    # f(i) = i; sum_i w_i f(i) = 3.15. Over R = 2000 repetitions of n = 10 draws the mean of the
    # resampled average has standard error sd / sqrt(R n) <= 1.9 / sqrt(20000) ~ 0.013 for
    # multinomial (less for the others); we test against 4 SE computed from the draws.
    g = torch.Generator().manual_seed(1)
    w = torch.softmax(LOG_W, 0)
    exact = float((w * torch.arange(7.0, dtype=torch.float64)).sum())
    means = torch.stack([get_resampler(scheme)(LOG_W, 10, generator=g).double().mean() for _ in range(2000)])
    se = float(means.std() / math.sqrt(means.numel()))
    assert abs(float(means.mean()) - exact) < 4 * max(se, 1e-3)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_offspring_counts_unbiased(scheme):
    # E[N_i] = n w_i; per-index SE of the mean count over R draws is sd(N_i) / sqrt(R) <= sqrt(n w_i) / sqrt(R).
    g = torch.Generator().manual_seed(2)
    n, R = 20, 1500
    w = torch.softmax(LOG_W, 0)
    counts = torch.stack([torch.bincount(get_resampler(scheme)(LOG_W, n, generator=g), minlength=7).double()
                          for _ in range(R)])
    mean, se = counts.mean(0), counts.std(0) / math.sqrt(R)
    assert torch.all((mean - n * w).abs() <= 4 * se.clamp(min=0.02))


@pytest.mark.parametrize("fn", [systematic, stratified, residual])
def test_low_variance_schemes_keep_floor_counts(fn):
    g = torch.Generator().manual_seed(3)
    n = 50
    w = torch.softmax(LOG_W, 0)
    for _ in range(50):
        c = torch.bincount(fn(LOG_W, n, generator=g), minlength=7).double()
        if fn is systematic:  # systematic: every count within 1 of n w_i
            assert bool(((c - n * w).abs() < 1 + 1e-9).all())
        if fn is residual:
            assert bool((c >= torch.floor(n * w)).all())
        if fn is stratified:  # at most one draw per stratum beyond the floor on each side
            assert bool(((c - n * w).abs() < 2 + 1e-9).all())


def test_same_seed_same_indices():
    for scheme in SCHEMES:
        a = get_resampler(scheme)(LOG_W, 33, generator=torch.Generator().manual_seed(7))
        b = get_resampler(scheme)(LOG_W, 33, generator=torch.Generator().manual_seed(7))
        assert torch.equal(a, b)


def test_bad_input():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ConfigError, match="unknown resampling scheme"):
        get_resampler("bogus")
    for scheme in SCHEMES:
        fn = get_resampler(scheme)
        with pytest.raises(ConfigError):
            fn(LOG_W, 0, generator=g)
        with pytest.raises(ConfigError):
            fn(torch.tensor([0.0, float("nan")]), 3, generator=g)
        with pytest.raises(ConfigError):
            fn(torch.zeros(2, 2), 3, generator=g)
        with pytest.raises(NoMassError):
            fn(torch.full((4,), -math.inf), 3, generator=g)
