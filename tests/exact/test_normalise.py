"""ExactPosterior's sliced normalisation agrees with whole-table logsumexps."""

import math

import pytest
import torch

import bayes_rlhf.exact.posterior as posterior
from bayes_rlhf import ExactPosterior


@pytest.mark.parametrize("slice_rows", [7, 1 << 16])  # many slices, a ragged last one; one slice
@pytest.mark.parametrize("offset", [0.0, 3e-7, 0.5])  # exact, float32 rounding (renormalised), not a table
def test_sliced_normalisation_matches_direct(gpt2_post, monkeypatch, slice_rows, offset):
    monkeypatch.setattr(posterior, "_SLICE", slice_rows)
    l0 = gpt2_post.prior_log_probs + offset
    r = gpt2_post.rewards.clone()
    r[::5] = -math.inf  # hard-constraint rows
    post = ExactPosterior(gpt2_post.prompt, gpt2_post.completion_ids, gpt2_post.mask, l0, r, 0.7,
                          vocabulary=gpt2_post.vocabulary)
    total = float(torch.logsumexp(l0, 0))
    prior = l0 - total if abs(total) < 1e-4 else l0
    lw = prior + r / 0.7
    log_z = float(torch.logsumexp(lw, 0))
    assert torch.allclose(post.prior_log_probs, prior, atol=1e-14, rtol=0)
    assert math.isclose(post.log_z, log_z, abs_tol=1e-13)
    assert torch.allclose(post.log_probs, lw - log_z, atol=1e-13, rtol=0)
    assert abs(float(post.probs.sum()) - 1.0) < 1e-12
    assert post.prior_log_probs is not l0 or offset == 0.5  # the caller's tensor is not shifted in place
    assert torch.equal(l0, gpt2_post.prior_log_probs + offset)


def test_sliced_logsumexp_of_all_minus_inf_is_minus_inf(monkeypatch):
    monkeypatch.setattr(posterior, "_SLICE", 3)
    assert posterior._logsumexp(torch.full((10,), -math.inf, dtype=torch.float64)) == -math.inf
    assert posterior._logsumexp(torch.zeros(0, dtype=torch.float64)) == -math.inf
