"""The diagnostics on real sampler output (WeightedSamples, SMC) and real LM policy samples."""

from __future__ import annotations

import math

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.diagnostics.frontier import table_rows
from bayes_rlhf.diagnostics.inference_data import load_inference_data, save_inference_data, to_inference_data
from bayes_rlhf.diagnostics.exact import policy_log_probs
from bayes_rlhf.diagnostics.sampled import forward_kl, reverse_kl
from bayes_rlhf.models.toy import tiny_lm

samplers = pytest.importorskip("bayes_rlhf.samplers")


@pytest.fixture(scope="module")
def policy_and_table(gpt2_post):
    policy = tiny_lm("gpt2", vocab_size=8, seed=3)
    return policy, policy_log_probs(policy, gpt2_post)


def test_forward_kl_from_smc_runs(gpt2_target, gpt2_post, policy_and_table):
    # R independent bootstrap-SMC runs; each gives a self-normalised KL(pi* || q) estimate with
    # the exact log Z. Particles within a run are correlated by resampling, so the standard
    # error is taken across runs: the mean of R = 8 runs is within 4 of those SEs of the exact
    # value (the O(1/N) self-normalisation bias, N = 400, is far smaller).
    _, log_q = policy_and_table
    exact = br.compare(log_q, gpt2_post).kl_posterior_q
    g = torch.Generator().manual_seed(0)
    ests = []
    for _ in range(8):
        ws = samplers.smc(gpt2_target, gpt2_post.prompt, 400, generator=g)
        rows = table_rows(gpt2_post, ws.ids, ws.mask)
        est = forward_kl(log_q[rows], gpt2_post.prior_log_probs[rows], gpt2_post.rewards[rows], gpt2_post.beta,
                         log_weights=ws.log_weights, log_z=gpt2_post.log_z)
        ests.append(est.kl.value)
    ests = torch.tensor(ests)
    se = float(ests.std()) / math.sqrt(len(ests))
    assert abs(float(ests.mean()) - exact) < 4 * se


def test_reverse_kl_from_policy_samples(gpt2_target, gpt2_post, policy_and_table):
    # q is a real LM: ancestral samples with their log q; log pi0 from scoring with the prior.
    policy, log_q = policy_and_table
    exact = br.compare(log_q, gpt2_post).kl_q_posterior
    s = policy.sample(gpt2_post.prompt, 3000, 4, generator=torch.Generator().manual_seed(1))
    lp0 = gpt2_target.prior.score(gpt2_post.prompt, s.ids, s.mask).sum(-1)
    r = gpt2_target.rewards(gpt2_post.prompt, s.ids, s.mask)
    est = reverse_kl(s.log_probs, lp0, r, gpt2_post.beta, log_z=gpt2_post.log_z)
    assert abs(est.kl.value - exact) < 4 * est.kl.stderr  # an iid mean: CLT, 4 SE


def test_weighted_samples_convert_and_round_trip(gpt2_target, gpt2_post, tmp_path):
    ws = samplers.importance_sample(gpt2_target, [gpt2_post.prompt, "w3"], 64,
                                    generator=torch.Generator().manual_seed(2))
    back = load_inference_data(save_inference_data(to_inference_data(samples=ws), tmp_path / "ws.nc"))
    assert back.sample_stats["ess"].shape == (2,)
    assert torch.allclose(torch.from_numpy(back.sample_stats["ess"].values), ws.ess.double())
    assert torch.allclose(torch.from_numpy(back.sample_stats["log_z"].values), ws.log_z.double())
    assert back.posterior["completion_ids"].shape == (1, 128, 4)


def test_training_history_converts(tmp_path):
    variational = pytest.importorskip("bayes_rlhf.variational")
    hist = variational.TrainingHistory()
    hist.append({"step": 0, "objective": 0.1})
    hist.append({"step": 1, "objective": 0.2, "kl_q_posterior": 0.5})
    back = load_inference_data(save_inference_data(to_inference_data(history=hist), tmp_path / "h.nc"))
    assert back.training["objective"].values.tolist() == [0.1, 0.2]
    assert math.isnan(float(back.training["kl_q_posterior"].values[0]))
