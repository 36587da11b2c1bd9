"""Exact moments of the k1, k2, k3 estimators of KL(q || p) and of the gradients they induce.

For a policy q and a prior p on an enumerated table (every completion x of one prompt), with
rho = log q(x) / p(x) and rho_t = log q(x_t | x_<t) / p(x_t | x_<t) (0 past the end)::

    k1 = rho            k2 = rho^2 / 2          k3 = (p/q - 1) - log(p/q) = expm1(-rho) + rho
    per token: k_tok = sum_t k(rho_t)           (k1_tok = k1; k3_tok is unbiased too, by the chain rule)
    mean = E_q[k], variance = Var_q[k], bias = mean - KL(q || p)          (exact sums over the table)

Gradients are taken in the tabular coordinates of an autoregressive policy: one logit theta_(h, v)
per prefix h and next token v, q(v | h) = softmax_v theta_(h, .). Every estimator used in training
has the form ``g(x) = sum_t c_t(x) grad log q(x_t | x_<t)``::

    k1 in the reward (REINFORCE)   c_t = rho                 E[g] = grad KL(q || p)
    k1 in the reward, reward-to-go c_t = sum_{s >= t} rho_s  E[g] = grad KL(q || p)
    k3 in the reward               c_t = k3(rho)
    k1 in the loss                 c_t = 1                   E[g] = 0
    k2 in the loss (per token)     c_t = rho_t               (k2 of the sequence = k1 in the reward)
    k3 in the loss (per token)     c_t = 1 - exp(-rho_t)     (the GRPO form)
    k3 in the loss (sequence)      c_t = 1 - exp(-rho)       E[g] = grad KL(p || q), the forward KL

Exactly, with A(node) = sum_{(x, t) reaching node} q(x) c_t(x) and B(h) = sum_v A(h v)::

    E[g]_(h, v)  = A(h v) - B(h) q(v | h)
    E ||g||^2    = sum_x q(x) sum_t c_t(x)^2 (1 - 2 q(x_t | x_<t) + sum_u q(u | x_<t)^2)
    variance     = E ||g||^2 - ||E[g]||^2          (trace of the covariance)

The true gradients of KL(q || p) and KL(p || q) are computed independently, by autograd through
the tabular parametrisation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from bayes_rlhf.errors import ConfigError

GRADIENTS = {
    "k1 in reward": "c_t = rho (the sequence log-ratio as a reward, REINFORCE)",
    "k1 in reward, reward-to-go": "c_t = sum_{s>=t} rho_s (per-token KL penalty, returns)",
    "k3 in reward": "c_t = k3(rho)",
    "k1 in loss": "c_t = 1 (k1 differentiated on the samples)",
    "k2 in loss, per token": "c_t = rho_t",
    "k3 in loss, per token": "c_t = 1 - exp(-rho_t) (GRPO)",
    "k3 in loss, sequence": "c_t = 1 - exp(-rho)",
}


@dataclass(frozen=True)
class EstimatorMoments:
    """Exact mean, variance and bias (mean - KL(q || p)) of one KL estimator under x ~ q."""

    name: str
    mean: float
    variance: float
    bias: float

    @property
    def sd(self) -> float:
        return math.sqrt(max(self.variance, 0.0))


@dataclass(frozen=True)
class GradientMoments:
    """Exact moments of one gradient estimator in the tabular coordinates (norms are Euclidean).

    ``bias_norm`` is ||E[g] - grad KL(q || p)||; ``cosine_reverse`` / ``cosine_forward`` compare E[g]
    with grad KL(q || p) and grad KL(p || q); ``variance`` is E||g - E[g]||^2 for one draw.
    """

    name: str
    description: str
    norm: float
    bias_norm: float
    cosine_reverse: float
    cosine_forward: float
    variance: float


@dataclass(frozen=True)
class KLEstimatorReport:
    """Everything ``kl_estimators`` computes; ``rows()`` gives plain dicts for tables."""

    kl: float
    forward_kl: float
    estimators: dict
    gradients: dict
    per_position: dict = field(repr=False)
    grad_reverse: torch.Tensor = field(repr=False)
    grad_forward: torch.Tensor = field(repr=False)

    def rows(self) -> list[dict]:
        out = [{"kind": "estimator", **asdict(e), "sd": e.sd} for e in self.estimators.values()]
        return out + [{"kind": "gradient", **asdict(g)} for g in self.gradients.values()]


@dataclass(frozen=True)
class PrefixTree:
    """Node ids of a table's prefixes: root 0; ``node[k, t]`` is the prefix x_<=t+1 of row k."""

    node: torch.Tensor      # LongTensor [K, T], -1 past the end of a row
    parent: torch.Tensor    # LongTensor [M], parent of each node (-1 for the root)

    @property
    def size(self) -> int:
        return self.parent.numel()

    def parents_of_rows(self) -> torch.Tensor:
        """LongTensor [K, T]: the prefix x_<t each token is drawn after (-1 past the end)."""
        prev = torch.cat([torch.zeros_like(self.node[:, :1]), self.node[:, :-1]], dim=1)
        return torch.where(self.node >= 0, prev, -1)


def prefix_tree(ids: torch.Tensor, mask: torch.Tensor) -> PrefixTree:
    """The prefix tree of completions ``ids`` [K, T] with ``mask`` [K, T] (distinct rows)."""
    K, T = ids.shape
    node = torch.full((K, T), -1, dtype=torch.long)
    parents, prev, count = [torch.tensor([-1])], torch.zeros(K, dtype=torch.long), 1
    for t in range(T):
        live = torch.nonzero(mask[:, t]).squeeze(-1)
        if live.numel() == 0:
            break
        pairs = torch.stack([prev[live], ids[live, t].long()], dim=1)
        uniq, inv = torch.unique(pairs, dim=0, return_inverse=True)
        node[live, t] = count + inv
        parents.append(uniq[:, 0])
        prev = prev.clone()
        prev[live] = count + inv
        count += uniq.shape[0]
    return PrefixTree(node, torch.cat(parents))


def token_log_probs(log_probs: torch.Tensor, tree: PrefixTree) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token log-probs [K, T] (0 past the end), log-mass of every node [M]) of a distribution
    given by its sequence log-probs [K] on a table that holds its whole support."""
    top = float(log_probs.max())
    mass = torch.zeros(tree.size, dtype=torch.float64)
    for t in range(tree.node.shape[1]):
        live = tree.node[:, t] >= 0
        mass.index_add_(0, tree.node[live, t], (log_probs[live] - top).exp())
    mass[0] = (log_probs - top).exp().sum()
    log_mass = mass.log() + top
    rows = tree.parents_of_rows()
    live = tree.node >= 0
    cond = torch.where(live, log_mass[tree.node.clamp(min=0)] - log_mass[rows.clamp(min=0)], 0.0)
    return cond, log_mass


def _moments(q: torch.Tensor, values: torch.Tensor, kl: float, name: str) -> EstimatorMoments:
    mean = float(q @ values)
    return EstimatorMoments(name, mean, float(q @ (values - mean) ** 2), mean - kl)


def _coefficients(rho: torch.Tensor, rho_t: torch.Tensor, live: torch.Tensor) -> dict[str, torch.Tensor]:
    seq = lambda v: v[:, None].expand_as(rho_t)  # noqa: E731 - one value on every token
    to_go = torch.flip(torch.cumsum(torch.flip(rho_t, [1]), 1), [1])
    c = {"k1 in reward": seq(rho), "k1 in reward, reward-to-go": to_go,
         "k3 in reward": seq(torch.expm1(-rho) + rho), "k1 in loss": torch.ones_like(rho_t),
         "k2 in loss, per token": rho_t, "k3 in loss, per token": -torch.expm1(-rho_t),
         "k3 in loss, sequence": seq(-torch.expm1(-rho))}
    return {k: torch.where(live, v, 0.0) for k, v in c.items()}


def _true_gradients(tree: PrefixTree, lq_t: torch.Tensor, lq: torch.Tensor, lp: torch.Tensor):
    """grad KL(q || p) and grad KL(p || q) [M] by autograd through theta_(h, v) = log q(v | h)."""
    live = tree.node >= 0
    theta = torch.zeros(tree.size, dtype=torch.float64)
    theta[tree.node[live]] = lq_t[live]
    theta.requires_grad_(True)
    sib = torch.zeros(tree.size, dtype=torch.float64).index_add(0, tree.parent.clamp(min=0)[1:], theta[1:].exp())
    log_cond = theta - sib[tree.parent.clamp(min=0)].log()
    rows = torch.where(live, log_cond[tree.node.clamp(min=0)], 0.0).sum(1)
    reverse = (rows.exp() * (rows - lp)).sum()
    forward = (lp.exp() * (lp - rows)).sum()
    g_rev, = torch.autograd.grad(reverse, theta, retain_graph=True)
    g_fwd, = torch.autograd.grad(forward, theta)
    return g_rev, g_fwd


def _cosine(a: torch.Tensor, b: torch.Tensor, scale: float) -> float:
    """cos(a, b); NaN when either is zero to rounding (norm below 1e-12 of ``scale``)."""
    na, nb = float(a.norm()), float(b.norm())
    tiny = 1e-12 * scale
    return float(a @ b) / (na * nb) if na > tiny and nb > tiny else math.nan


def kl_estimators(log_q: torch.Tensor, log_p: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> KLEstimatorReport:
    """Exact moments of the k1/k2/k3 KL estimators and of their gradients (module docstring).

    Parameters
    ----------
    log_q, log_p : Tensor [K]
        Sequence log-probabilities of the policy q and the prior p on the table; each must sum
        to 1 over it (the table is their whole support) and q must be positive on every row.
    ids, mask : Tensor [K, T]
        The completions (distinct rows), mask True at real tokens.

    Returns
    -------
    KLEstimatorReport
        ``estimators`` (k1, k2, k3 per sequence and per token), ``gradients`` (see ``GRADIENTS``),
        ``per_position`` (E_q[k(rho_t)] [T] for k1, k2, k3), exact KL both ways, the true gradients [M].
    """
    lq, lp = torch.as_tensor(log_q).double().reshape(-1), torch.as_tensor(log_p).double().reshape(-1)
    if not (lq.shape == lp.shape == ids.shape[:1]) or mask.shape != ids.shape:
        raise ConfigError(f"log_q and log_p must be [K] and ids, mask [K, T]; got {tuple(lq.shape)}, "
                          f"{tuple(lp.shape)}, {tuple(ids.shape)}, {tuple(mask.shape)}")
    if not bool(torch.isfinite(lq).all() and torch.isfinite(lp).all()):
        raise ConfigError("log_q and log_p must be finite on every row: the lab compares two distributions on one "
                          "support (a q with zeros there has an infinite forward KL)")
    for name, lx in (("q", lq), ("p", lp)):
        total = float(torch.logsumexp(lx, 0))
        if abs(total) > 1e-6:
            raise ConfigError(f"{name} has mass {math.exp(total):.8f} on the table, not 1: the table must hold its "
                              "whole support (restrict a policy with policy.with_support(prior))")
    lq, lp = lq - torch.logsumexp(lq, 0), lp - torch.logsumexp(lp, 0)
    tree = prefix_tree(ids.long(), mask.bool())
    lq_t, log_mass = token_log_probs(lq, tree)
    lp_t, _ = token_log_probs(lp, tree)
    live = tree.node >= 0
    q, rho, rho_t = lq.exp(), lq - lp, lq_t - lp_t
    kl, forward_kl = float(q @ rho), float(lp.exp() @ (lp - lq))
    k3_t = torch.where(live, torch.expm1(-rho_t) + rho_t, 0.0)
    values = {"k1": rho, "k2": rho ** 2 / 2, "k3": torch.expm1(-rho) + rho,
              "k1 per token": rho_t.sum(1), "k2 per token": (rho_t ** 2 / 2).sum(1), "k3 per token": k3_t.sum(1)}
    estimators = {k: _moments(q, v, kl, k) for k, v in values.items()}
    per_position = {"k1": q @ rho_t, "k2": q @ (rho_t ** 2 / 2), "k3": q @ k3_t}
    g_rev, g_fwd = _true_gradients(tree, lq_t, lq, lp)
    rows = tree.parents_of_rows().clamp(min=0)
    cond = lq_t.exp()
    sq = torch.zeros(tree.size, dtype=torch.float64).index_add_(0, tree.parent.clamp(min=0)[1:],
                                                                 (log_mass[1:] - log_mass[tree.parent[1:]]).exp() ** 2)
    gradients, scale = {}, max(float(g_rev.norm()), float(g_fwd.norm()), 1e-300)
    for name, c in _coefficients(rho, rho_t, live).items():
        a = torch.zeros(tree.size, dtype=torch.float64).index_add_(0, tree.node[live], (q[:, None] * c)[live])
        b = torch.zeros(tree.size, dtype=torch.float64).index_add_(0, tree.parent.clamp(min=0)[1:], a[1:])
        mean = a - b[tree.parent.clamp(min=0)] * (log_mass - log_mass[tree.parent.clamp(min=0)]).exp()
        mean[0] = 0.0  # the root is not a coordinate
        second = float(q @ torch.where(live, c ** 2 * (1 - 2 * cond + sq[rows]), 0.0).sum(1))
        gradients[name] = GradientMoments(name, GRADIENTS[name], float(mean.norm()), float((mean - g_rev).norm()),
                                          _cosine(mean, g_rev, scale), _cosine(mean, g_fwd, scale),
                                          max(0.0, second - float(mean @ mean)))
    return KLEstimatorReport(kl, forward_kl, estimators, gradients, per_position, g_rev, g_fwd)


def kl_estimator_lab(policy, posterior) -> KLEstimatorReport:
    """``kl_estimators`` of a policy (``CausalLM`` or log q [K] on the table) against the prior of an
    ``ExactPosterior``'s table (its completions and prior log-probs)."""
    from bayes_rlhf.diagnostics.exact import policy_log_probs

    lq = policy if isinstance(policy, torch.Tensor) else policy_log_probs(policy, posterior)
    return kl_estimators(lq, posterior.prior_log_probs, posterior.completion_ids, posterior.mask)
