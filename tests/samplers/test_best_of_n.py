"""Best-of-N: the exact distribution (with reward ties) against brute force, KL bound, sampling."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from bayes_rlhf.errors import ConfigError
from bayes_rlhf.samplers import (best_of_n, best_of_n_kl, best_of_n_kl_bound, best_of_n_log_probs,
                                 best_of_n_mean_reward)

PROMPT = "w1 w2"


def brute_force_bon(p: torch.Tensor, r: torch.Tensor, n: int) -> torch.Tensor:
    """P(winner = k) by summing over every n-tuple of draws; ties split uniformly."""
    K = p.numel()
    out = torch.zeros(K, dtype=torch.float64)
    for tup in itertools.product(range(K), repeat=n):
        idx = torch.tensor(tup)
        prob = float(p[idx].prod())
        best = r[idx].max()
        winners = idx[r[idx] == best]
        out.index_add_(0, winners, torch.full((winners.numel(),), prob / winners.numel(), dtype=torch.float64))
    return out


def test_exact_matches_brute_force_with_ties(short_post):
    # keep the 12 most likely completions (renormalised) so that K^3 tuples stay cheap
    keep = torch.topk(short_post.prior_log_probs, 12).indices
    p = torch.softmax(short_post.prior_log_probs[keep], 0)
    r = short_post.rewards[keep]
    assert r.unique().numel() < r.numel()  # the count reward has ties
    for n in (1, 2, 3):
        exact = best_of_n_log_probs(short_post, n, base_log_probs=torch.full_like(short_post.rewards, -math.inf)
                                    .index_put((keep,), p.log())).exp()[keep]
        assert torch.allclose(exact, brute_force_bon(p, r, n), atol=1e-12)


def test_normalised_and_kl_within_bound(mild_post):
    assert best_of_n_kl(mild_post, 1) == pytest.approx(0.0, abs=1e-12)
    prev_reward = -math.inf
    for n in (1, 2, 4, 8, 32, 128):
        lb = best_of_n_log_probs(mild_post, n)
        assert float(torch.logsumexp(lb, 0)) == pytest.approx(0.0, abs=1e-10)
        assert best_of_n_kl(mild_post, n) <= best_of_n_kl_bound(n) + 1e-12
        er = best_of_n_mean_reward(mild_post, n)
        assert er >= prev_reward - 1e-12  # more candidates, higher expected reward
        prev_reward = er
    assert best_of_n_kl_bound(1) == 0.0 and best_of_n_kl_bound(4) == pytest.approx(math.log(4) - 0.75)


def test_sampler_matches_exact_distribution(mild_target, mild_post):
    # 3000 best-of-4 draws; their mean reward is within 4 SE (sd of r under p_BoN / sqrt(3000))
    # of the exact best-of-4 mean reward. log_z is the IS estimate from all 12000 candidates.
    n, m = 4, 3000
    ws = best_of_n(mild_target, PROMPT, n, num_samples=m, generator=torch.Generator().manual_seed(0))
    q = best_of_n_log_probs(mild_post, n).exp()
    mean = best_of_n_mean_reward(mild_post, n)
    sd = math.sqrt(float((q * mild_post.rewards ** 2).sum()) - mean ** 2)
    assert abs(float(ws.rewards.mean()) - mean) < 4 * sd / math.sqrt(m)
    assert abs(float(ws.log_z) - mild_post.log_z) < 0.05  # relvar 1.4 / 12000 -> SE of log Z_hat ~ 0.011
    assert len(ws) == m and torch.all(ws.log_weights == 0)


def test_picks_the_best_candidate(mild_target):
    ws = best_of_n(mild_target, ["w1 w2", "w3"], 16, num_samples=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(ws.prompt_index, torch.tensor([0] * 5 + [1] * 5))
    recomputed = mild_target.rewards([ws.prompts[i] for i in ws.prompt_index.tolist()], ws.ids, ws.mask)
    assert torch.equal(recomputed, ws.rewards)


def test_bad_input(mild_target, mild_post):
    with pytest.raises(ConfigError):
        best_of_n(mild_target, PROMPT, 0)
    with pytest.raises(ConfigError):
        best_of_n_log_probs(mild_post, 0)
    with pytest.raises(ConfigError):
        best_of_n_log_probs(mild_post, 2, base_log_probs=torch.zeros(3))


def test_tiny_top_levels_keep_their_precision():
    # two reward levels, the top one with mass 3e-14: (F+G)^n - F^n is a difference of nearby numbers, so the
    # top level's log-probability is checked against its series n G F^(n-1) (1 + (n-1) G / (2F) + ...) to 1e-9
    from types import SimpleNamespace

    g = 3e-14
    lp = torch.tensor([math.log1p(-g), math.log(g)], dtype=torch.float64)
    post = SimpleNamespace(prior_log_probs=lp, rewards=torch.tensor([0.0, 1.0], dtype=torch.float64))
    for n in (1, 2, 4, 16):
        want = math.log(n) + math.log(g) + (n - 1) * math.log1p(-g) + math.log1p((n - 1) * g / (2 * (1 - g)))
        assert float(best_of_n_log_probs(post, n)[1]) == pytest.approx(want, abs=1e-9)
