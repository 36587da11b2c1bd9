"""The reward-KL frontier: E[r] against KL(. || pi0) for the posterior family and for policies.

Prior log-probs l_k and rewards r_k of the enumerated table do not depend on beta, so one
enumeration gives the whole exact frontier by re-tilting::

    for beta in grid:
        log pi*_beta = l + r / beta - logsumexp(l + r / beta)
        point = (KL(pi*_beta || pi0) = E_beta[r] / beta - log Z_beta,  E_beta[r])

No policy with the same KL to the prior has a higher expected reward than pi*_beta: the
frontier is the upper envelope. Policies (any log q over the table), best-of-N (exact, from
``best_of_n_log_probs``, and its analytic bound KL <= log N - (N - 1) / N) and samplers
(empirical distribution of their draws) are points on the same axes.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch

from bayes_rlhf.diagnostics.exact import compare
from bayes_rlhf.diagnostics.weights import EmptySamplesError
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.exact.posterior import ExactPosterior


@dataclass(frozen=True)
class FrontierPoint:
    """One point on the reward-KL plane.

    Attributes
    ----------
    label : str
    kind : str
        'posterior', 'policy', 'best_of_n', 'best_of_n_bound' or 'sampler'.
    kl : float
        KL(q || pi0) in nats.
    reward : float
        E_q[r].
    beta : float or None
        The posterior's beta (kind 'posterior').
    n : int or None
        N for best-of-N, number of draws for a sampler.
    entropy : float
        H(q) in nats (NaN when unknown).
    """

    label: str
    kind: str
    kl: float
    reward: float
    beta: float | None = None
    n: int | None = None
    entropy: float = math.nan

    def as_dict(self) -> dict:
        return asdict(self)


def retilt(posterior: ExactPosterior, beta: float) -> ExactPosterior:
    """The exact posterior of the same prompt at another beta, from the same table (no model calls)."""
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ConfigError(f"beta must be a finite number > 0, got {beta!r}")
    return ExactPosterior(posterior.prompt, posterior.completion_ids, posterior.mask,
                          posterior.prior_log_probs, posterior.rewards, float(beta), posterior.lm,
                          posterior.vocabulary)


def beta_grid(low: float = 0.05, high: float = 20.0, num: int = 25) -> list[float]:
    """``num`` betas spaced evenly in log between ``low`` and ``high``."""
    if not (0 < low < high) or num < 2:
        raise ConfigError(f"need 0 < low < high and num >= 2, got low={low}, high={high}, num={num}")
    return torch.logspace(math.log10(low), math.log10(high), num, dtype=torch.float64).tolist()


def posterior_frontier(posterior: ExactPosterior, betas: Sequence[float] | None = None) -> list[FrontierPoint]:
    """Exact (KL(pi*_beta || pi0), E_beta[r]) for every beta in ``betas`` (default ``beta_grid()``)."""
    betas = beta_grid() if betas is None else list(betas)
    if not betas:
        raise ConfigError("betas is empty: give at least one beta")
    if any(not (isinstance(b, (int, float)) and math.isfinite(b) and b > 0) for b in betas):
        raise ConfigError(f"every beta must be a finite number > 0, got {list(betas)}")
    finite = torch.isfinite(posterior.rewards)
    l0, r = posterior.prior_log_probs[finite], posterior.rewards[finite]  # r = -inf has no mass
    points = []
    for b in sorted(betas):
        lw = l0 + r / b
        lp = lw - torch.logsumexp(lw, 0)
        p = lp.exp()
        mean_r, kl, ent = float(p @ r), float(p @ (lp - l0)), float(-(p @ lp))
        points.append(FrontierPoint(f"pi* (beta={b:.3g})", "posterior", kl, mean_r, beta=float(b), entropy=ent))
    return points


def _entropy(log_q: torch.Tensor) -> float:
    q = log_q.exp()
    return float(-(q * torch.where(q > 0, log_q, 0.0)).sum())


def policy_point(policy, posterior: ExactPosterior, label: str = "policy", kind: str = "policy",
                 n: int | None = None) -> FrontierPoint:
    """Exact point of a policy: a ``CausalLM`` sharing the prior's tokenizer, or log q [K] on the table."""
    c = compare(policy, posterior)
    lq = policy if isinstance(policy, torch.Tensor) else None
    ent = _entropy(lq.double()) if lq is not None else math.nan
    return FrontierPoint(label, kind, c.kl_q_prior, c.mean_reward, n=n, entropy=ent)


def _best_of_n_fn(fn: Callable | None) -> Callable:
    if fn is not None:
        return fn
    try:
        module = importlib.import_module("bayes_rlhf.samplers.best_of_n")
        return getattr(module, "best_of_n_log_probs")
    except (ImportError, AttributeError) as exc:
        raise ConfigError("no best-of-N distribution available: pass log_probs_fn(posterior, n) -> "
                          "log q [K], or install a bayes_rlhf with samplers.best_of_n") from exc


def best_of_n_points(posterior: ExactPosterior, ns: Sequence[int],
                     log_probs_fn: Callable | None = None) -> list[FrontierPoint]:
    """Exact best-of-N points and their analytic KL bounds, two per N.

    Parameters
    ----------
    ns : sequence of int
        Values of N (>= 1).
    log_probs_fn : callable, optional
        ``f(posterior, n) -> log q [K]``, the exact best-of-N distribution on the table; defaults
        to ``bayes_rlhf.samplers.best_of_n.best_of_n_log_probs`` when it exists.

    Returns
    -------
    list of FrontierPoint
        For each N, kind 'best_of_n' (exact KL and reward) then kind 'best_of_n_bound'
        (KL = log N - (N - 1) / N, an upper bound on the exact KL; same reward).
    """
    if any(int(n) < 1 for n in ns):
        raise ConfigError(f"every N must be >= 1, got {list(ns)}")
    fn = _best_of_n_fn(log_probs_fn)
    points = []
    for n in ns:
        n = int(n)
        exact = policy_point(fn(posterior, n), posterior, label=f"best-of-{n}", kind="best_of_n", n=n)
        points.append(exact)
        bound = math.log(n) - (n - 1) / n
        points.append(FrontierPoint(f"best-of-{n} bound", "best_of_n_bound", bound, exact.reward, n=n))
    return points


def table_rows(posterior: ExactPosterior, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row of the posterior's table of each draw, LongTensor [n]; ``ConfigError`` if one is not in it.

    With it any sampler's draws get exact log pi0, r and log pi* (``posterior.prior_log_probs[rows]``).
    """
    if ids.numel() == 0:
        raise EmptySamplesError("no draws given: pass at least one completion")
    T = posterior.completion_ids.shape[1]
    if ids.shape[1] != T or mask.shape != ids.shape:
        raise ConfigError(f"ids and mask must be [n, {T}] (the posterior's max_new_tokens)")
    table = torch.where(posterior.mask, posterior.completion_ids, -1)
    rows = torch.where(mask.bool().cpu(), ids.long().cpu(), -1)
    uniq, inverse = torch.unique(torch.cat([table, rows]), dim=0, return_inverse=True)
    if uniq.shape[0] != table.shape[0]:
        raise ConfigError("some draws are not completions in the posterior's table (another prompt, "
                          "max_new_tokens or tokenizer?)")
    row_of_key = torch.empty(uniq.shape[0], dtype=torch.long)
    row_of_key[inverse[: table.shape[0]]] = torch.arange(table.shape[0])
    return row_of_key[inverse[table.shape[0]:]]


def empirical_log_probs(posterior: ExactPosterior, ids: torch.Tensor, mask: torch.Tensor,
                        log_weights: torch.Tensor | None = None) -> torch.Tensor:
    """log of the (weighted) empirical distribution of draws on the posterior's table, [K].

    Draws outside the table raise ``ConfigError``. Plug-in KLs of this distribution are biased
    upwards by about (support size - 1) / (2 n): use many draws.
    """
    idx = table_rows(posterior, ids, mask)
    w = torch.ones(idx.numel(), dtype=torch.float64) if log_weights is None else \
        torch.softmax(torch.as_tensor(log_weights).double().reshape(-1), 0)
    mass = torch.zeros(posterior.num_completions, dtype=torch.float64).index_add_(0, idx, w)
    return (mass / mass.sum()).log()


def sampler_point(posterior: ExactPosterior, ids: torch.Tensor, mask: torch.Tensor, label: str = "sampler",
                  log_weights: torch.Tensor | None = None) -> FrontierPoint:
    """Point of a sampler's (weighted) draws, through their empirical distribution on the table."""
    lq = empirical_log_probs(posterior, ids, mask, log_weights)
    c = compare(lq, posterior)
    return FrontierPoint(label, "sampler", c.kl_q_prior, c.mean_reward, n=int(ids.shape[0]), entropy=_entropy(lq))
