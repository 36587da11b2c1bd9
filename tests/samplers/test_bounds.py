"""Two-sided bounds on log Z and the KL sandwich, against exact values on a tiny model."""

from __future__ import annotations

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.samplers import kl_sandwich, log_z_lower_bound, lower_bound, smc, upper_bound

PROMPT = "w1 w2"


def test_bounds_bracket_log_z_and_tighten_with_k(mild_target, mild_post, other_policy):
    # Each bound is a mean of i.i.d. terms; the comparisons allow 3 of its standard errors.
    g = torch.Generator().manual_seed(0)
    exact_samples = mild_post.sample(800, generator=g)
    lo1 = lower_bound(mild_target, PROMPT, 800, proposal=other_policy, generator=g)
    lo8 = lower_bound(mild_target, PROMPT, 400, proposal=other_policy, num_inner=8, generator=g)
    up1 = upper_bound(mild_target, PROMPT, exact_samples, proposal=other_policy, generator=g)
    up8 = upper_bound(mild_target, PROMPT, mild_post.sample(400, generator=g),
                      proposal=other_policy, num_inner=8, generator=g)
    z = mild_post.log_z
    assert lo1.value < z + 3 * lo1.stderr and lo8.value < z + 3 * lo8.stderr
    assert up1.value > z - 3 * up1.stderr and up8.value > z - 3 * up8.stderr
    assert lo1.value < lo8.value and up8.value < up1.value
    # the K = 1 bounds are log Z -/+ the two KL divergences, known exactly here
    cmp = br.compare(other_policy, mild_post)
    assert abs(lo1.value - (z - cmp.kl_q_posterior)) < 3 * lo1.stderr
    assert abs(up1.value - (z + cmp.kl_posterior_q)) < 3 * up1.stderr


def test_kl_sandwich_contains_exact_kls(mild_target, mild_post, other_policy):
    g = torch.Generator().manual_seed(1)
    elbo = lower_bound(mild_target, PROMPT, 1000, proposal=other_policy, generator=g)
    eubo = upper_bound(mild_target, PROMPT, mild_post.sample(1000, generator=g), proposal=other_policy, generator=g)
    # tighter bounds on log Z from 40 SMC runs with 64 particles and the posterior-sample bound
    smc_lo = log_z_lower_bound(smc(mild_target, [PROMPT] * 40, 64, generator=g).log_z)
    up = upper_bound(mild_target, PROMPT, mild_post.sample(300, generator=g), num_inner=64, generator=g)
    s = kl_sandwich(elbo, eubo, smc_lo, up)
    cmp = br.compare(other_policy, mild_post)
    assert s.log_z_lower - 3 * s.log_z_lower_se < mild_post.log_z < s.log_z_upper + 3 * s.log_z_upper_se
    assert cmp.kl_q_posterior < s.kl_q_posterior_max + 3 * s.kl_q_posterior_max_se
    assert cmp.kl_posterior_q < s.kl_posterior_q_max + 3 * s.kl_posterior_q_max_se
    # and the sandwich is informative: within 0.2 nats of the truth here
    assert s.kl_q_posterior_max - cmp.kl_q_posterior < 0.2 and s.kl_posterior_q_max - cmp.kl_posterior_q < 0.2


def test_bad_input(mild_target, mild_post):
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ConfigError):
        lower_bound(mild_target, [PROMPT, "w3"], 10, generator=g)
    with pytest.raises(ConfigError):
        lower_bound(mild_target, PROMPT, 10, num_inner=0, generator=g)
    with pytest.raises(ConfigError):
        log_z_lower_bound([])
    bad = br.Target(prior=mild_target.prior, reward=mild_target.reward, beta=1.5, max_new_tokens=3)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        upper_bound(bad, PROMPT, mild_post.sample(5, generator=g))


def test_upper_bound_needs_exact_samples(mild_target, mild_post):
    g = torch.Generator().manual_seed(2)
    sir = br.sampling_importance_resampling(mild_target, PROMPT, 64, 32, generator=g)
    assert sir.source == "resampled"
    with pytest.raises(ConfigError, match="source='resampled', not 'exact'"):
        upper_bound(mild_target, PROMPT, sir, generator=g)
    drawn = mild_target.prior.sample(PROMPT, 8, mild_target.max_new_tokens, generator=g)
    with pytest.raises(ConfigError, match="source='model'"):
        upper_bound(mild_target, PROMPT, drawn, generator=g)
    # exact rejection samples are exact; and the estimate is an upper bound (3 SE slack)
    reward_max = 2.0 * mild_target.max_new_tokens
    rej = br.exact_rejection_sample(mild_target, PROMPT, 200, reward_max=reward_max, generator=g).samples
    assert rej.source == "exact"
    up = upper_bound(mild_target, PROMPT, rej, num_inner=4, generator=g)
    assert up.side == "upper" and up.value > mild_post.log_z - 3 * up.stderr


def test_kl_sandwich_refuses_bounds_on_the_wrong_side(mild_target, mild_post):
    g = torch.Generator().manual_seed(3)
    elbo = lower_bound(mild_target, PROMPT, 64, generator=g)
    eubo = upper_bound(mild_target, PROMPT, mild_post.sample(64, generator=g), generator=g)
    assert elbo.side == "lower" and eubo.side == "upper"
    with pytest.raises(ConfigError, match="eubo is a lower bound"):
        kl_sandwich(elbo, elbo)
    with pytest.raises(ConfigError, match="log_z_lower is an upper bound"):
        kl_sandwich(elbo, eubo, log_z_lower=eubo)
    with pytest.raises(ConfigError, match="BoundEstimate"):
        kl_sandwich(elbo, eubo, log_z_upper=1.0)
    s = kl_sandwich(elbo, eubo, log_z_lower_bound([elbo.value]), eubo)
    assert s.log_z_lower <= s.log_z_upper
