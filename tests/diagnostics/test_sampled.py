"""Sampled divergences against their exact values on an enumerable model."""

from __future__ import annotations

import math

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.diagnostics.sampled import forward_kl, importance_log_z, reverse_kl
from bayes_rlhf.diagnostics.weights import EmptySamplesError
from bayes_rlhf.errors import ConfigError


def tempered_table(post, temperature: float = 0.6) -> torch.Tensor:
    """log q [K]: the prior's table tempered and renormalised, a valid distribution on the table."""
    return torch.log_softmax(temperature * post.prior_log_probs, 0)


def draw_rows(log_q: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n row indices drawn from exp(log_q) with a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    return torch.multinomial(log_q.exp(), n, replacement=True, generator=g)


def chi2(log_p: torch.Tensor, log_q: torch.Tensor) -> float:
    """chi^2(p || q) = E_q[(p/q)^2] - 1, exact on the table."""
    return float(torch.exp(torch.logsumexp(2 * log_p - log_q, 0))) - 1.0


# Tolerance: every estimate below is a mean (or a smooth function of means) of iid terms, so by
# the CLT it is within 4 delta-method standard errors of its expectation except with probability
# 6e-5; seeds are fixed. Estimators that are only consistent (log of a mean) also carry their
# first-order bias, computed exactly on the table and added to the tolerance.
Z = 4.0


@pytest.fixture(scope="module")
def post(gpt2_post):
    return gpt2_post


@pytest.fixture(scope="module")
def log_q(post):
    return tempered_table(post)


def _q_draws(post, log_q, n, seed):
    rows = draw_rows(log_q, n, seed)
    return rows, log_q[rows], post.prior_log_probs[rows], post.rewards[rows]


def test_reverse_kl_with_exact_log_z(post, log_q):
    exact = br.compare(log_q, post).kl_q_posterior
    _, lq, lp, r = _q_draws(post, log_q, 4000, seed=0)
    est = reverse_kl(lq, lp, r, post.beta, log_z=post.log_z)
    assert est.kl.stderr > 0
    assert abs(est.kl.value - exact) < Z * est.kl.stderr  # unbiased: a plain mean of log-weights
    assert est.elbo.value <= post.log_z + Z * est.elbo.stderr


def test_reverse_kl_and_log_z_from_the_same_draws(post, log_q):
    exact = br.compare(log_q, post).kl_q_posterior
    n = 4000
    _, lq, lp, r = _q_draws(post, log_q, n, seed=1)
    est = reverse_kl(lq, lp, r, post.beta)
    # log of the IS mean: first-order bias -chi2(pi* || q) / (2n), exact on the table
    bias = chi2(post.log_probs, log_q) / (2 * n)
    assert abs(est.log_z.value - post.log_z) < Z * est.log_z.stderr + bias
    assert abs(est.kl.value - exact) < Z * est.kl.stderr + bias
    direct = importance_log_z(lq, lp, r, post.beta)
    assert direct.value == pytest.approx(est.log_z.value)


def test_forward_kl_from_exact_posterior_draws(post, log_q):
    exact = br.compare(log_q, post).kl_posterior_q
    n = 4000
    rows = draw_rows(post.log_probs, n, seed=2)
    args = (log_q[rows], post.prior_log_probs[rows], post.rewards[rows], post.beta)
    known = forward_kl(*args, log_z=post.log_z)
    assert abs(known.kl.value - exact) < Z * known.kl.stderr
    est = forward_kl(*args)  # reverse-IS (harmonic mean) log Z from the same draws
    bias = chi2(log_q, post.log_probs) / (2 * n)
    assert abs(est.log_z.value - post.log_z) < Z * est.log_z.stderr + bias
    assert abs(est.kl.value - exact) < Z * est.kl.stderr + bias


def test_forward_kl_from_weighted_draws(post, log_q):
    # importance-weighted draws of q stand in for an SMC / IS sampler's output
    exact = br.compare(log_q, post).kl_posterior_q
    n = 8000
    rows = draw_rows(log_q, n, seed=3)
    lw = post.prior_log_probs[rows] + post.rewards[rows] / post.beta - log_q[rows]
    est = forward_kl(log_q[rows], post.prior_log_probs[rows], post.rewards[rows], post.beta,
                     log_weights=lw, log_z=post.log_z)
    # self-normalised IS: bias O(chi2 / n) times the spread of lw, far below the SE here
    bias = chi2(post.log_probs, log_q) / n * float((post.log_probs - log_q).abs().max())
    assert abs(est.kl.value - exact) < Z * est.kl.stderr + bias


def test_infinite_kl_cases(post, log_q):
    lq = log_q[:3].clone()
    lq[0] = -math.inf  # q misses a posterior draw: KL(pi* || q) is infinite
    rows = torch.arange(3)
    est = forward_kl(lq, post.prior_log_probs[rows], post.rewards[rows], post.beta)
    assert est.kl.value == math.inf
    r = post.rewards[rows].clone()
    r[1] = -math.inf  # q draws a completion pi* excludes: KL(q || pi*) is infinite
    assert reverse_kl(log_q[rows], post.prior_log_probs[rows], r, post.beta).kl.value == math.inf


def test_bad_input(post, log_q):
    with pytest.raises(EmptySamplesError):
        reverse_kl(torch.zeros(0), torch.zeros(0), torch.zeros(0), 1.0)
    with pytest.raises(EmptySamplesError):
        forward_kl([], [], [], 1.0)
    with pytest.raises(ConfigError, match="entries"):
        reverse_kl(torch.zeros(3), torch.zeros(2), torch.zeros(3), 1.0)
    with pytest.raises(ConfigError, match="beta"):
        reverse_kl(torch.zeros(3), torch.zeros(3), torch.zeros(3), 0.0)


def test_one_draw_has_no_standard_error_and_infinite_rewards_are_refused(post, log_q):
    # one draw says nothing about the spread (as Estimate.of_terms): inf, not the 0 of the formula
    rows = torch.arange(1)
    args = (log_q[rows], post.prior_log_probs[rows], post.rewards[rows], post.beta)
    assert importance_log_z(*args).stderr == math.inf
    assert reverse_kl(*args).kl.stderr == math.inf and reverse_kl(*args).elbo.stderr == math.inf
    assert forward_kl(*args).kl.stderr == math.inf
    assert math.isfinite(importance_log_z(log_q[:2], post.prior_log_probs[:2], post.rewards[:2], post.beta).stderr)
    # SNIS weights with one non-zero weight: the same
    w = torch.tensor([0.0, -math.inf, -math.inf])
    rows = torch.arange(3)
    assert forward_kl(log_q[rows], post.prior_log_probs[rows], post.rewards[rows], post.beta,
                      log_weights=w).eubo.stderr == math.inf
    r = post.rewards[rows].clone()
    r[0] = math.inf  # exp(r / beta) = inf: no posterior (as evaluate_reward refuses it)
    with pytest.raises(ConfigError, match=r"\+inf"):
        importance_log_z(log_q[rows], post.prior_log_probs[rows], r, post.beta)
    lp = post.prior_log_probs[rows].clone()
    lp[1] = math.inf
    with pytest.raises(ConfigError, match=r"prior_log_probs has \+inf"):
        reverse_kl(log_q[rows], lp, post.rewards[rows], post.beta)
