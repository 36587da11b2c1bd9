"""The KL-estimator lab: exact k1/k2/k3 moments and gradient moments, against hand computation
on a 2-token toy and against per-sample gradients written out densely on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.diagnostics.kl_estimators import kl_estimator_lab, kl_estimators, prefix_tree
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.models.toy import tiny_lm

A, B = 3, 4
Q1 = {A: 0.6, B: 0.4}
Q2 = {A: {A: 0.7, B: 0.3}, B: {A: 0.2, B: 0.8}}
P1 = {A: 0.5, B: 0.5}
P2 = {A: {A: 0.5, B: 0.5}, B: {A: 0.9, B: 0.1}}
ROWS = [(A, A), (A, B), (B, A), (B, B)]


@pytest.fixture(scope="module")
def toy():
    """Every completion is two tokens from {a, b}: q and p given by their conditionals."""
    ids = torch.tensor(ROWS)
    mask = torch.ones(4, 2, dtype=torch.bool)
    lq = torch.tensor([math.log(Q1[x] * Q2[x][y]) for x, y in ROWS], dtype=torch.float64)
    lp = torch.tensor([math.log(P1[x] * P2[x][y]) for x, y in ROWS], dtype=torch.float64)
    return ids, mask, lq, lp, kl_estimators(lq, lp, ids, mask)


def test_estimator_moments_by_hand(toy):
    *_, rep = toy
    q = [Q1[x] * Q2[x][y] for x, y in ROWS]
    rho1 = [math.log(Q1[x] / P1[x]) for x, _ in ROWS]
    rho2 = [math.log(Q2[x][y] / P2[x][y]) for x, y in ROWS]
    rho = [a + b for a, b in zip(rho1, rho2)]
    kl = sum(qi * r for qi, r in zip(q, rho))
    k3 = lambda r: math.exp(-r) - 1 + r  # noqa: E731
    expect = {
        "k1": [r for r in rho], "k2": [r * r / 2 for r in rho], "k3": [k3(r) for r in rho],
        "k2 per token": [(a * a + b * b) / 2 for a, b in zip(rho1, rho2)],
        "k3 per token": [k3(a) + k3(b) for a, b in zip(rho1, rho2)],
    }
    assert rep.kl == pytest.approx(kl, abs=1e-14)
    for name, vals in expect.items():
        mean = sum(qi * v for qi, v in zip(q, vals))
        var = sum(qi * (v - mean) ** 2 for qi, v in zip(q, vals))
        e = rep.estimators[name]
        assert e.mean == pytest.approx(mean, abs=1e-14) and e.variance == pytest.approx(var, abs=1e-14), name
        assert e.bias == pytest.approx(mean - kl, abs=1e-14)
    # k1 and k3 are unbiased, per sequence and (k3, by the chain rule) summed over tokens; k2 is not
    for name in ("k1", "k3", "k1 per token", "k3 per token"):
        assert abs(rep.estimators[name].bias) < 1e-14, name
    assert abs(rep.estimators["k2"].bias) > 1e-3
    assert rep.estimators["k3 per token"].variance < rep.estimators["k1"].variance
    kl_first = sum(Q1[v] * math.log(Q1[v] / P1[v]) for v in (A, B))
    assert float(rep.per_position["k3"][0]) == pytest.approx(kl_first, abs=1e-14)
    assert float(rep.per_position["k3"].sum()) == pytest.approx(kl, abs=1e-14)


def test_gradients_by_hand(toy):
    """Tabular logits theta_(h, v): forward KL gradient q - p at the root and p(h) (q(.|h) - p(.|h))
    below; k3 per token in the loss gives q(h) (q(.|h) - p(.|h)) below; the reverse KL gradient is
    q(h) q(v|h) [A(h v) - sum_u q(u|h) A(h u)] with A the log-ratio plus the KL still to come."""
    ids, mask, lq, lp, rep = toy
    tree = prefix_tree(ids, mask)
    fwd, k3tok, rev = (torch.zeros(tree.size, dtype=torch.float64) for _ in range(3))
    kl2 = {h: sum(Q2[h][v] * math.log(Q2[h][v] / P2[h][v]) for v in (A, B)) for h in (A, B)}
    adv1 = {v: math.log(Q1[v] / P1[v]) + kl2[v] for v in (A, B)}
    for k, (x, y) in enumerate(ROWS):
        n1, n2 = int(tree.node[k, 0]), int(tree.node[k, 1])
        fwd[n1], k3tok[n1] = Q1[x] - P1[x], Q1[x] - P1[x]
        rev[n1] = Q1[x] * (adv1[x] - sum(Q1[u] * adv1[u] for u in (A, B)))
        fwd[n2] = P1[x] * (Q2[x][y] - P2[x][y])
        k3tok[n2] = Q1[x] * (Q2[x][y] - P2[x][y])
        rev[n2] = Q1[x] * Q2[x][y] * (math.log(Q2[x][y] / P2[x][y]) - kl2[x])
    assert torch.allclose(rep.grad_forward, fwd, atol=1e-14) and torch.allclose(rep.grad_reverse, rev, atol=1e-14)
    g = rep.gradients
    cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))  # noqa: E731
    assert g["k3 in loss, per token"].norm == pytest.approx(float(k3tok.norm()), abs=1e-14)
    assert g["k3 in loss, per token"].bias_norm == pytest.approx(float((k3tok - rev).norm()), abs=1e-14)
    assert g["k3 in loss, per token"].cosine_forward == pytest.approx(cos(k3tok, fwd), abs=1e-14)
    # k3 differentiated in the loss over the whole sequence is exactly the forward-KL gradient
    assert g["k3 in loss, sequence"].cosine_forward == pytest.approx(1.0, abs=1e-14)
    assert g["k3 in loss, sequence"].norm == pytest.approx(float(fwd.norm()), abs=1e-14)
    for name in ("k1 in reward", "k1 in reward, reward-to-go"):  # unbiased for the reverse KL
        assert g[name].bias_norm < 1e-14 and g[name].cosine_reverse == pytest.approx(1.0, abs=1e-14)
    assert g["k1 in loss"].norm < 1e-14 and math.isnan(g["k1 in loss"].cosine_reverse)


def dense_gradients(lq_tok: torch.Tensor, tree, q_cond: dict) -> torch.Tensor:
    """grad log q(x_t | x_<t) of every (row, t) as dense vectors [K, T, M], written out entry by entry."""
    K, T = tree.node.shape
    out = torch.zeros(K, T, tree.size, dtype=torch.float64)
    parent_of = tree.parents_of_rows()
    for k in range(K):
        for t in range(T):
            node = int(tree.node[k, t])
            if node < 0:
                continue
            h = int(parent_of[k, t])
            for child, prob in q_cond[h].items():
                out[k, t, child] -= prob
            out[k, t, node] += 1.0
    return out


def test_gradient_moments_against_dense_per_sample_gradients(gpt2_lm):
    """A tiny GPT-2 prior and another as q, T = 3 with EOS (completions of 1 to 3 tokens, 400 rows)."""
    policy = tiny_lm("gpt2", vocab_size=8, seed=3)
    post = br.exact_posterior(br.Target(gpt2_lm, br.TokenReward(lambda i, m: torch.zeros(i.shape[0])), 1.0, 3),
                              "w1 w2")
    rep = kl_estimator_lab(policy, post)
    lq = br.diagnostics.policy_log_probs(policy, post)
    lp = post.prior_log_probs
    tree = prefix_tree(post.completion_ids, post.mask)
    live = tree.node >= 0
    # conditionals from the models' own next-token distributions (independent of the table's prefix sums)
    lq_tok = policy.token_log_probs(post.prompt, post.completion_ids, post.mask).detach().double()
    lp_tok = gpt2_lm.token_log_probs(post.prompt, post.completion_ids, post.mask).detach().double()
    lq_tok, lp_tok = torch.where(live, lq_tok, 0.0), torch.where(live, lp_tok, 0.0)
    assert torch.allclose(lq_tok.sum(1), lq, atol=1e-10)
    q_cond = {}
    for k, t in zip(*torch.nonzero(live, as_tuple=True)):
        h = int(tree.parents_of_rows()[k, t])
        q_cond.setdefault(h, {})[int(tree.node[k, t])] = float(lq_tok[k, t].exp())
    dense = dense_gradients(lq_tok, tree, q_cond)
    q = lq.exp()
    rho_t = lq_tok - lp_tok
    rho = rho_t.sum(1, keepdim=True).expand_as(rho_t)
    coef = {"k1 in reward": rho, "k2 in loss, per token": rho_t, "k3 in loss, per token": -torch.expm1(-rho_t),
            "k3 in loss, sequence": -torch.expm1(-rho),
            "k1 in reward, reward-to-go": torch.flip(torch.cumsum(torch.flip(rho_t, [1]), 1), [1])}
    grad_fwd = -(lp.exp()[:, None] * dense.sum(1)).sum(0)
    assert torch.allclose(rep.grad_forward, grad_fwd, atol=1e-12)
    for name, c in coef.items():
        g = (torch.where(live, c, 0.0)[:, :, None] * dense).sum(1)  # [K, M] per-sample gradients
        mean = q @ g
        var = float(q @ ((g - mean) ** 2).sum(1))
        m = rep.gradients[name]
        assert m.norm == pytest.approx(float(mean.norm()), rel=1e-9), name
        assert m.bias_norm == pytest.approx(float((mean - rep.grad_reverse).norm()), rel=1e-9, abs=1e-12), name
        assert m.variance == pytest.approx(var, rel=1e-9), name
    # REINFORCE with k1 is unbiased for the reverse KL (two independent computations agree)
    assert rep.gradients["k1 in reward"].bias_norm < 1e-12
    # per-token k3 summed is unbiased for the sequence KL (chain rule), with an EOS-ended table too
    assert rep.estimators["k3 per token"].mean == pytest.approx(rep.kl, abs=1e-12)
    assert rep.forward_kl == pytest.approx(float(lp.exp() @ (lp - lq)), abs=1e-12)
    assert {r["kind"] for r in rep.rows()} == {"estimator", "gradient"}


def test_bad_input(toy):
    ids, mask, lq, lp, _ = toy
    with pytest.raises(ConfigError, match="must be"):
        kl_estimators(lq[:3], lp, ids, mask)
    with pytest.raises(ConfigError, match="mass"):
        kl_estimators(lq + 0.1, lp, ids, mask)
    with pytest.raises(ConfigError, match="finite"):
        kl_estimators(torch.tensor([0.0, -math.inf, -math.inf, -math.inf], dtype=torch.float64), lp, ids, mask)
