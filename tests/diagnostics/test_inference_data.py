"""Conversion to arviz.InferenceData and the netCDF round trip."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.diagnostics.inference_data import (InferenceDataError, load_inference_data, posterior_from_dataset,
                                                   save_inference_data, to_inference_data)
from bayes_rlhf.diagnostics.weights import EmptySamplesError, kish_ess
from bayes_rlhf.errors import ConfigError


def _weighted(post, n=200, seed=0):
    """Importance draws of the prior for the posterior, two prompts' worth (prompt_index 0/1)."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.multinomial(post.prior_log_probs.exp(), n, replacement=True, generator=g)
    lw = post.rewards[rows] / post.beta
    return SimpleNamespace(ids=post.completion_ids[rows], mask=post.mask[rows], log_weights=lw,
                           rewards=post.rewards[rows], prompt_index=torch.arange(n) % 2,
                           log_z=torch.tensor([0.1, 0.2], dtype=torch.float64))


def test_round_trip(gpt2_post, tmp_path):
    post = gpt2_post
    samples = _weighted(post)
    history = [{"step": i, "loss": 1.0 / (i + 1), "kl_q_posterior": 0.5 / (i + 1), "note": "x"} for i in range(6)]
    history[3].pop("loss")  # missing entries become NaN
    comparisons = {"prior": br.compare(post.prior_log_probs, post), "posterior": br.compare(post.log_probs, post)}
    idata = to_inference_data(posteriors=[post], samples=samples, history=history, comparisons=comparisons)
    path = save_inference_data(idata, tmp_path / "run.nc")
    back = load_inference_data(path)
    assert set(back.groups()) == {"posterior", "sample_stats", "exact_0", "training", "comparisons"}
    rebuilt = posterior_from_dataset(back.exact_0, post.lm)
    assert torch.equal(rebuilt.completion_ids, post.completion_ids) and torch.equal(rebuilt.mask, post.mask)
    assert rebuilt.log_z == pytest.approx(post.log_z, abs=1e-12) and rebuilt.prompt == post.prompt
    np.testing.assert_allclose(back.sample_stats["log_weight"].values[0], samples.log_weights.numpy())
    w = back.sample_stats["weight"].values[0]
    assert w[::2].sum() == pytest.approx(1.0) and w[1::2].sum() == pytest.approx(1.0)  # per prompt
    assert back.sample_stats["ess"].values[0] == pytest.approx(kish_ess(samples.log_weights[::2]))
    np.testing.assert_allclose(back.sample_stats["log_z"].values, [0.1, 0.2])
    assert back.posterior["completion_ids"].shape == (1, 200, post.completion_ids.shape[1])
    assert math.isnan(float(back.training["loss"].values[3]))
    assert "note" not in back.training
    kl = back.comparisons["kl_q_posterior"].sel(policy="posterior").item()
    assert kl == pytest.approx(0.0, abs=1e-12)
    assert list(back.comparisons["policy"].values) == ["prior", "posterior"]


def test_history_with_rows_attribute_and_exact_draws(gpt2_post, tmp_path):
    s = gpt2_post.sample(50, generator=torch.Generator().manual_seed(0))
    exact_draws = SimpleNamespace(completions=s, rewards=gpt2_post.rewards[:50])
    hist = SimpleNamespace(rows=[{"step": 0, "objective": 0.1}, {"step": 1, "objective": 0.3}])
    idata = to_inference_data(samples=exact_draws, history=hist)
    back = load_inference_data(save_inference_data(idata, tmp_path / "x.nc"))
    assert back.sample_stats["ess"].values[0] == pytest.approx(50.0)  # unweighted draws
    np.testing.assert_allclose(back.training["objective"].values, [0.1, 0.3])


def test_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="nothing to convert"):
        to_inference_data()
    with pytest.raises(EmptySamplesError):
        to_inference_data(samples=SimpleNamespace(log_weights=torch.zeros(0), rewards=torch.zeros(0)))
    with pytest.raises(EmptySamplesError):
        to_inference_data(history=[])
    with pytest.raises(InferenceDataError, match="no InferenceData"):
        load_inference_data(tmp_path / "missing.nc")
    bad = tmp_path / "half.nc"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # a truncated HDF5 file
    with pytest.raises(InferenceDataError, match="half-written"):
        load_inference_data(bad)
