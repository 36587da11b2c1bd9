"""The exact reward-KL frontier from one enumeration, and points of policies and samplers."""

from __future__ import annotations

import math

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.diagnostics.frontier import (beta_grid, best_of_n_points, empirical_log_probs, policy_point,
                                             posterior_frontier, retilt, sampler_point)
from bayes_rlhf.diagnostics.weights import EmptySamplesError
from bayes_rlhf.errors import ConfigError


def test_frontier_at_the_posterior_beta(gpt2_post):
    pts = posterior_frontier(gpt2_post, [gpt2_post.beta])
    assert pts[0].kl == pytest.approx(gpt2_post.kl_to_prior, rel=1e-12)
    assert pts[0].reward == pytest.approx(gpt2_post.mean_reward, rel=1e-12)
    assert pts[0].entropy == pytest.approx(gpt2_post.entropy, rel=1e-12)


def test_frontier_is_monotone_and_bounds_every_policy(gpt2_post):
    grid = beta_grid(0.05, 20.0, 15)
    pts = posterior_frontier(gpt2_post, grid)
    kls, rs = [p.kl for p in pts], [p.reward for p in pts]
    assert kls == sorted(kls, reverse=True) and rs == sorted(rs, reverse=True)  # betas ascending
    # No policy beats pi*_beta at its own objective: E_q r - beta KL(q||pi0) <= beta log Z_beta.
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        lq = torch.log_softmax(gpt2_post.prior_log_probs + torch.randn(gpt2_post.num_completions, generator=g,
                                                                       dtype=torch.float64), 0)
        q = policy_point(lq, gpt2_post)
        for b in grid:
            assert q.reward - b * q.kl <= b * retilt(gpt2_post, b).log_z + 1e-9


def test_best_of_n_with_a_given_function(gpt2_post):
    # best-of-1 is the prior: KL 0, reward E_pi0[r], and the bound log 1 - 0 = 0
    pts = best_of_n_points(gpt2_post, [1], log_probs_fn=lambda post, n: post.prior_log_probs)
    exact, bound = pts
    assert exact.kind == "best_of_n" and bound.kind == "best_of_n_bound"
    assert exact.kl == pytest.approx(0.0, abs=1e-12) and bound.kl == 0.0
    assert exact.reward == pytest.approx(gpt2_post.prior_mean_reward)


def test_best_of_n_from_the_samplers_module(gpt2_post):
    pytest.importorskip("bayes_rlhf.samplers.best_of_n")
    pts = best_of_n_points(gpt2_post, [2, 8])
    for exact, bound in zip(pts[::2], pts[1::2]):
        assert exact.kl <= bound.kl + 1e-9  # KL(BoN || pi0) <= log N - (N - 1) / N
        assert exact.reward > gpt2_post.prior_mean_reward


def test_empirical_distribution_and_sampler_point(gpt2_post):
    post = gpt2_post
    rows = torch.tensor([0, 0, 5])
    lq = empirical_log_probs(post, post.completion_ids[rows], post.mask[rows])
    assert lq[0].exp() == pytest.approx(2 / 3) and lq[5].exp() == pytest.approx(1 / 3)
    assert float(lq.exp().sum()) == pytest.approx(1.0)
    lq_w = empirical_log_probs(post, post.completion_ids[rows], post.mask[rows],
                               log_weights=torch.tensor([0.0, 0.0, math.log(2.0)]))
    assert lq_w[0].exp() == pytest.approx(0.5)
    # exact posterior draws: mean reward within 4 standard errors (CLT on iid rewards)
    n = 4000
    s = post.sample(n, generator=torch.Generator().manual_seed(1))
    pt = sampler_point(post, s.ids, s.mask, label="exact draws")
    se = math.sqrt(post.expectation(post.rewards ** 2) - post.mean_reward ** 2) / math.sqrt(n)
    assert abs(pt.reward - post.mean_reward) < 4 * se
    assert pt.n == n and pt.kind == "sampler"


def test_bad_input(gpt2_post):
    with pytest.raises(ConfigError):
        retilt(gpt2_post, -1.0)
    with pytest.raises(ConfigError):
        posterior_frontier(gpt2_post, [])
    with pytest.raises(ConfigError):
        best_of_n_points(gpt2_post, [0], log_probs_fn=lambda p, n: p.prior_log_probs)
    with pytest.raises(EmptySamplesError):
        empirical_log_probs(gpt2_post, gpt2_post.completion_ids[:0], gpt2_post.mask[:0])
    bad = torch.full((1, gpt2_post.completion_ids.shape[1]), 3)
    bad_mask = torch.ones_like(bad, dtype=torch.bool)
    bad_mask[0, -1] = False  # a 3-token completion that does not end in EOS is not in the table
    with pytest.raises(ConfigError, match="not completions"):
        empirical_log_probs(gpt2_post, bad, bad_mask)
    assert br.compare(gpt2_post.log_probs, gpt2_post).kl_q_posterior == pytest.approx(0.0, abs=1e-12)


def test_retilt_matches_a_fresh_enumeration(gpt2_lm, reward, short_post):
    fresh = br.exact_posterior(br.Target(gpt2_lm, reward, 2.0, 3), "w1 w2")
    re = retilt(short_post, 2.0)
    assert re.log_z == pytest.approx(fresh.log_z, abs=1e-10)
    assert torch.allclose(re.log_probs, fresh.log_probs, atol=1e-10)
