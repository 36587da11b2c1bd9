"""Quasi-rejection sampling: acceptance rate and distance to pi* as c varies, against the exact table."""

from __future__ import annotations

import math

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.errors import ConfigError, NoMassError
from bayes_rlhf.samplers import quasi_rejection_log_probs, quasi_rejection_sample

PROMPT = "w1 w2"


def test_acceptance_rate_matches_exact(mild_target, mild_post):
    # 4000 proposals: the empirical rate is binomial with SE sqrt(a (1 - a) / 4000) <= 0.008.
    # At a small C every proposal can be accepted (a = 1, SE 0): then the rate must be exactly 1,
    # hence the non-strict bound; the larger C keeps a strictly inside (0, 1) so the test can fail.
    g = torch.Generator().manual_seed(0)
    rates = []
    for log_c in (mild_post.log_z - 1.0, mild_post.log_z + 1.0):
        ws = quasi_rejection_sample(mild_target, PROMPT, 4000, log_c, generator=g)
        _, rate = quasi_rejection_log_probs(mild_post, log_c)
        rates.append(rate)
        assert abs(float(ws.info["acceptance_rate"]) - rate) <= 3 * math.sqrt(rate * (1 - rate) / 4000)
    assert 0.05 < rates[1] < 0.95


def test_closer_to_posterior_as_c_grows(mild_post):
    tvs, rates = [], []
    for log_c in torch.linspace(mild_post.log_z - 3, mild_post.log_z + 4, 8).tolist():
        lq, rate = quasi_rejection_log_probs(mild_post, log_c)
        tvs.append(br.compare(lq, mild_post).total_variation)
        rates.append(rate)
    assert all(a >= b - 1e-12 for a, b in zip(tvs, tvs[1:]))
    assert all(a >= b - 1e-12 for a, b in zip(rates, rates[1:]))
    # log C >= max log(P / q) = max r / beta: exact rejection sampling, rate Z / C
    log_c = float(mild_post.rewards.max()) / mild_post.beta
    lq, rate = quasi_rejection_log_probs(mild_post, log_c)
    assert br.compare(lq, mild_post).total_variation < 1e-12
    assert rate == pytest.approx(math.exp(mild_post.log_z - log_c), rel=1e-12)


def test_weighted_accepted_samples_are_consistent(mild_target, mild_post):
    # With the max(1, P / (C q)) weights the accepted samples estimate E_pi*[r] at any C.
    # 20000 proposals at a small C (rate ~0.8); delta-method SE of the self-normalised mean
    # sqrt(sum w_i^2 (r_i - mean)^2) with normalised w; we allow 4 SE.
    ws = quasi_rejection_sample(mild_target, PROMPT, 20000, mild_post.log_z - 1.0,
                                generator=torch.Generator().manual_seed(2))
    w = ws.normalized_weights()
    est = float(ws.mean_reward)
    se = math.sqrt(float((w ** 2 * (ws.rewards - est) ** 2).sum()))
    assert abs(est - mild_post.mean_reward) < 4 * se
    assert abs(float(ws.log_z) - mild_post.log_z) < 0.05  # relvar 1.4 / 20000 -> SE ~ 0.008


def test_bad_input(mild_target, mild_post):
    with pytest.raises(ConfigError, match="log_c"):
        quasi_rejection_sample(mild_target, PROMPT, 10, float("inf"))
    with pytest.raises(ConfigError):
        quasi_rejection_sample(mild_target, PROMPT, 0, 0.0)
    with pytest.raises(NoMassError, match="accepted"):
        quasi_rejection_sample(mild_target, PROMPT, 5, 500.0, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError):
        quasi_rejection_log_probs(mild_post, 0.0, proposal_log_probs=torch.zeros(2))
