"""Sampled divergence estimates, with standard errors, for models too large to enumerate.

Inputs are plain tensors, so any sampler's output works. With ``lw = log pi0 + r / beta - log q``
(the log-weight of x against the unnormalised posterior)::

    ELBO          = E_q[lw]   <= log Z            KL(q || pi*) = log Z - ELBO
    EUBO          = E_pi*[lw] >= log Z            KL(pi* || q) = EUBO - log Z
    log Z (IS)    = log mean_q exp(lw)            (a stochastic lower bound, unbiased in Z)
    log Z (RIS)   = -log mean_pi* exp(-lw)        (a stochastic upper bound, unbiased in 1/Z)

Standard errors come from the delta method: an estimator g(mean_w f) has influence
``phi_i`` and variance ``sum_i wbar_i^2 phi_i^2`` under self-normalised weights wbar
(``var(phi) / n`` for plain draws). The exact per-token KLs (``token_kl``, ``position_kl``) are
in ``diagnostics.exact``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bayes_rlhf.diagnostics.weights import EmptySamplesError, _as_log_weights
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.estimate import Estimate
from bayes_rlhf.logweights import log_mean_exp


@dataclass(frozen=True)
class ReverseKL:
    """KL(q || pi*) from draws of q: the ELBO, the IS log Z and their gap (nats)."""

    elbo: Estimate
    log_z: Estimate
    kl: Estimate

    def as_dict(self) -> dict:
        return {k: v.as_dict() for k, v in (("elbo", self.elbo), ("log_z", self.log_z), ("kl", self.kl))}


@dataclass(frozen=True)
class ForwardKL:
    """KL(pi* || q) from (weighted) posterior draws: the EUBO, log Z and their gap (nats)."""

    eubo: Estimate
    log_z: Estimate
    kl: Estimate

    def as_dict(self) -> dict:
        return {k: v.as_dict() for k, v in (("eubo", self.eubo), ("log_z", self.log_z), ("kl", self.kl))}


def _vec(x, name: str, n: int | None = None) -> torch.Tensor:
    t = (x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=torch.float64)).double().cpu()
    t = t.reshape(-1)  # (a list of floats as float64, not torch's float32 default)
    if t.numel() == 0:
        raise EmptySamplesError(f"{name} is empty: pass at least one sample")
    if n is not None and t.numel() != n:
        raise ConfigError(f"{name} has {t.numel()} entries but log_q has {n}; pass one value per sample")
    if bool(torch.isnan(t).any()):
        raise ConfigError(f"{name} contains NaN")
    return t


def _log_weights(log_q, prior_log_probs, rewards, beta: float, q_may_vanish: bool = False) -> torch.Tensor:
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ConfigError(f"beta must be a finite number > 0, got {beta!r}")
    lq = _vec(log_q, "log_q")
    lp = _vec(prior_log_probs, "prior_log_probs", lq.numel())
    r = _vec(rewards, "rewards", lq.numel())
    if bool((lq == math.inf).any()) or (not q_may_vanish and bool((lq == -math.inf).any())):
        raise ConfigError("log_q has infinite entries: every draw of q must have 0 < q(x) <= 1")
    if bool((lp == math.inf).any()):
        raise ConfigError("prior_log_probs has +inf entries: every draw must have pi0(x) <= 1")
    if bool((r == math.inf).any()):
        raise ConfigError("rewards has +inf entries: exp(r / beta) would make the posterior not normalisable; "
                          "rewards must be finite or -inf (a hard constraint)")
    return lp + r / beta - lq


def _snis_stderr(wbar: torch.Tensor, influence: torch.Tensor) -> float:
    """Delta-method standard error ``sqrt(sum wbar^2 phi^2)`` (phi: centred influence [n])."""
    if int((wbar > 0).sum()) < 2:  # one draw (or one with weight) says nothing about its spread
        return math.inf
    return float(torch.sqrt((wbar * wbar * influence * influence).sum()))


def reverse_kl(log_q, prior_log_probs, rewards, beta: float, log_z: float | None = None,
               log_z_stderr: float = 0.0) -> ReverseKL:
    """KL(q || pi*) = log Z - ELBO from n draws of q.

    Parameters
    ----------
    log_q, prior_log_probs, rewards : Tensor [n]
        For each draw x_i ~ q: log q(x_i), log pi0(x_i) and r(x_i).
    beta : float
    log_z : float, optional
        A known or independently estimated log Z (exact, SMC). Without it the IS estimate from
        the same draws is used; KL is then the IS gap, consistent but biased low by O(1/n).
    log_z_stderr : float
        Standard error of a given ``log_z`` (added in quadrature).

    Returns
    -------
    ReverseKL
        ``elbo``, ``log_z`` and ``kl`` estimates with delta-method standard errors.
    """
    lw = _log_weights(log_q, prior_log_probs, rewards, beta)
    n = lw.numel()
    if bool((lw == -math.inf).any()):
        inf = Estimate(-math.inf, math.nan, n)
        return ReverseKL(inf, _is_log_z(lw), Estimate(math.inf, math.nan, n))
    u = torch.full((n,), 1.0 / n, dtype=torch.float64)
    elbo = Estimate(float(lw.mean()), _snis_stderr(u, lw - lw.mean()), n)
    if log_z is not None:
        kl = Estimate(float(log_z) - elbo.value, math.hypot(elbo.stderr, log_z_stderr), n)
        return ReverseKL(elbo, Estimate(float(log_z), log_z_stderr, n), kl)
    lz = _is_log_z(lw)
    ratio = torch.exp(lw - lz.value - math.log(n)) * n  # w_i / mean(w)
    kl = Estimate(lz.value - elbo.value, _snis_stderr(u, (ratio - 1.0) - (lw - lw.mean())), n)
    return ReverseKL(elbo, lz, kl)


def _is_log_z(lw: torch.Tensor) -> Estimate:
    n = lw.numel()
    value = float(log_mean_exp(lw))
    ratio = torch.exp(lw - value)  # w_i / mean(w)
    u = torch.full((n,), 1.0 / n, dtype=torch.float64)
    return Estimate(value, _snis_stderr(u, ratio - 1.0), n)


def importance_log_z(log_q, prior_log_probs, rewards, beta: float) -> Estimate:
    """log Z = log mean exp(lw) from draws of q, with the delta-method standard error."""
    return _is_log_z(_log_weights(log_q, prior_log_probs, rewards, beta))


def forward_kl(log_q, prior_log_probs, rewards, beta: float, log_weights=None,
               log_z: float | None = None, log_z_stderr: float = 0.0) -> ForwardKL:
    """KL(pi* || q) = EUBO - log Z from posterior draws (exact, rejection, or weighted SMC/IS).

    Parameters
    ----------
    log_q, prior_log_probs, rewards : Tensor [n]
        For each posterior draw x_i: log q(x_i), log pi0(x_i) and r(x_i).
    beta : float
    log_weights : Tensor [n], optional
        Unnormalised log-weights of the draws (SMC, importance sampling); None for exact draws.
    log_z : float, optional
        Known or estimated log Z (e.g. the sampler's own). Without it the reverse importance
        (harmonic-mean) estimate ``-log E_pi*[exp(-lw)]`` is used: an upper bound in
        expectation, so KL is then biased low.
    log_z_stderr : float
        Standard error of a given ``log_z``.
    """
    lw = _log_weights(log_q, prior_log_probs, rewards, beta, q_may_vanish=True)
    n = lw.numel()
    if log_weights is None:
        wbar = torch.full((n,), 1.0 / n, dtype=torch.float64)
    else:
        wbar = torch.softmax(_as_log_weights(_vec(log_weights, "log_weights", n)), 0)
    keep = wbar > 0
    if bool((lw[keep] == -math.inf).any()):
        raise ConfigError("a posterior draw has reward -inf or prior probability 0; "
                          "posterior draws must lie in the posterior's support")
    wbar, lw = wbar[keep], lw[keep]
    if bool((lw == math.inf).any()):  # q(x) = 0 where pi* has mass
        return ForwardKL(Estimate(math.inf, math.nan, n), Estimate(math.nan, math.nan, n),
                         Estimate(math.inf, math.nan, n))
    eubo_v = float((wbar * lw).sum())
    eubo = Estimate(eubo_v, _snis_stderr(wbar, lw - eubo_v), n)
    if log_z is not None:
        kl = Estimate(eubo_v - float(log_z), math.hypot(eubo.stderr, log_z_stderr), n)
        return ForwardKL(eubo, Estimate(float(log_z), log_z_stderr, n), kl)
    neg = -lw
    log_mean_inv = float(torch.logsumexp(neg + wbar.log(), 0))  # log E_pi*[exp(-lw)] = -log Z
    ratio = torch.exp(neg - log_mean_inv)
    lz = Estimate(-log_mean_inv, _snis_stderr(wbar, ratio - 1.0), n)
    kl = Estimate(eubo_v - lz.value, _snis_stderr(wbar, (lw - eubo_v) + (ratio - 1.0)), n)
    return ForwardKL(eubo, lz, kl)
