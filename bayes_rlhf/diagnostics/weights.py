"""Importance-weight diagnostics: Kish effective sample size and the PSIS k-hat.

Given unnormalised log-weights ``lw_i = log pi*~(x_i) - log q(x_i)`` of n draws x_i ~ q::

    w_i   = exp(lw_i - max lw) / sum_j exp(lw_j - max lw)        # self-normalised
    ESS   = 1 / sum_i w_i^2                                       # Kish, in [1, n]
    log Z = logsumexp(lw) - log n                                 # importance estimate
    (the arithmetic lives in bayes_rlhf.logweights; kish_ess and normalized_weights are its own:
    with no mass they give 0.0 and zeros, while weight_diagnostics and psis_khat raise NoMassError)
    k-hat = shape of a generalised Pareto fit to the largest weights (az.psislw)

ESS says how many equally weighted draws the weighted set is worth; k-hat says whether the
weight distribution has a finite variance at all, which ESS alone cannot show (a heavy tail
may simply not have been sampled yet).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch

from bayes_rlhf.errors import NoMassError
from bayes_rlhf.logweights import (EmptySamplesError, check_log_weights, kish_ess, log_mean_exp,  # noqa: F401
                                   normalized_log_weights, normalized_weights)

#: Below this many draws the Pareto tail has too few points to fit; k-hat is reported as NaN.
#: (az.psislw fits the largest ceil(min(0.2 n, 3 sqrt n)) weights and needs at least 5 of them.)
MIN_PSIS_SAMPLES = 25

#: Log-weights whose spread (max - min) is at most this are equal up to rounding: a zero-variance
#: sampler (SMC twisted by the exact soft values) on a float32 model spreads them ~2e-6 over 4
#: tokens (2^-21 steps), where arviz fitted k ~ 10, "very bad". Weights within a factor e^(1e-4)
#: are bounded, so every moment is finite: k-hat is -inf ("good").
EQUAL_LOG_WEIGHTS_ATOL = 1e-4

#: k-hat thresholds (Vehtari et al., "Pareto smoothed importance sampling", 2024).
KHAT_GOOD, KHAT_OK, KHAT_BAD = 0.5, 0.7, 1.0


def _as_log_weights(log_weights, name: str = "log_weights") -> torch.Tensor:
    """Checked float64 CPU log-weights [n]; NoMassError when none has mass (the diagnostics need some)."""
    lw = check_log_weights(log_weights, name).cpu()
    if not bool(torch.isfinite(lw).any()):
        raise NoMassError(f"every entry of {name} is -inf: no sample has target mass")
    return lw


def psis_khat(log_weights) -> tuple[torch.Tensor, float]:
    """Pareto-smoothed log-weights [n] and the Pareto shape k-hat, through ``az.psislw``.

    How to read k-hat (the tail index of the weight distribution):

    * ``k < 0.5``: the weights have finite variance; the central limit theorem holds and the
      importance estimates converge at the usual 1/sqrt(n) rate. Good proposal.
    * ``0.5 <= k < 0.7``: the variance is infinite, but Pareto smoothing still gives usable
      estimates with a moderate number of draws (the practical threshold; for small n it is
      ``min(1 - 1/log10(n), 0.7)``).
    * ``0.7 <= k < 1``: the estimates converge too slowly to be trusted at any practical n;
      the proposal misses a region where the target has mass.
    * ``k >= 1``: the weights do not even have a finite mean; log Z and every expectation
      from these weights are meaningless.

    With fewer than ``MIN_PSIS_SAMPLES`` draws (or fewer than that with finite weight) the tail
    cannot be fitted and k-hat is NaN. Bounded, discrete weights (a reward with a few values, or
    exact samples whose weights are all equal) often tie at their maximum across the whole tail:
    there is then no Pareto tail to fit (arviz says inf), the largest weight is a point mass and
    every moment is finite, so k-hat is reported as -inf ("good"); so are weights equal up to
    rounding (spread at most ``EQUAL_LOG_WEIGHTS_ATOL``). When only 1 to 4 distinct
    draws lie above the tied cutoff, the tail cannot be judged either way: NaN ("unknown").
    """
    lw = _as_log_weights(log_weights)
    finite = torch.isfinite(lw)
    if int(finite.sum()) < MIN_PSIS_SAMPLES:
        return normalized_log_weights(lw), math.nan
    if float(lw[finite].max() - lw[finite].min()) <= EQUAL_LOG_WEIGHTS_ATOL:  # psislw fits the rounding noise
        return normalized_log_weights(lw), -math.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz as az

        smoothed = np.full(lw.shape[0], -np.inf)
        s, k = az.psislw(lw[finite].numpy())
    smoothed[finite.numpy()] = s
    k = float(k)
    if math.isinf(k) and k > 0:  # psislw found at most 4 draws above its cutoff: ties in the tail
        x = lw[finite].double()
        n = x.numel()
        tail = math.ceil(min(0.2 * n, 3 * math.sqrt(n)))  # arviz's tail size (r_eff = 1)
        cutoff = torch.sort(x, descending=True).values[tail]
        k = -math.inf if int((x > cutoff).sum()) == 0 else math.nan
    return torch.from_numpy(smoothed), k


def khat_label(khat: float, n: int | None = None) -> str:
    """'good' (< 0.5), 'ok' (< 0.7), 'bad' (< 1), 'very bad' (>= 1) or 'unknown' (NaN). With the number
    of draws ``n`` the reliable range ends at min(1 - 1/log10(n), 0.7) instead (0.29 at n = 25): a k-hat
    past it is 'bad' however far below 0.7."""
    if math.isnan(khat):
        return "unknown"
    reliable = KHAT_OK
    if n is not None:  # below n = 10 the bound is <= 0: no k-hat is reliable
        reliable = min(1 - 1 / math.log10(n), KHAT_OK) if n > 10 else 0.0
    if khat == -math.inf or khat < min(KHAT_GOOD, reliable):  # -inf: equal weights, no tail at all
        return "good"
    if khat < reliable:
        return "ok"
    return "bad" if khat < KHAT_BAD else "very bad"


@dataclass(frozen=True)
class WeightDiagnostics:
    """Summary of one set of importance weights.

    Attributes
    ----------
    num_samples : int
    ess : float
        Kish effective sample size.
    ess_fraction : float
        ``ess / num_samples``.
    khat : float
        PSIS Pareto shape (NaN with too few draws); see ``psis_khat``.
    khat_label : str
        'good', 'ok', 'bad', 'very bad' or 'unknown'.
    log_z : float
        ``logsumexp(lw) - log n``, the importance estimate of log Z.
    max_weight : float
        The largest normalised weight.
    """

    num_samples: int
    ess: float
    ess_fraction: float
    khat: float
    khat_label: str
    log_z: float
    max_weight: float

    def as_dict(self) -> dict:
        return asdict(self)


def weight_diagnostics(log_weights) -> WeightDiagnostics:
    """Kish ESS, PSIS k-hat and the log Z estimate of log-weights [n]."""
    lw = _as_log_weights(log_weights)
    n = lw.shape[0]
    ess = kish_ess(lw)
    _, k = psis_khat(lw)
    return WeightDiagnostics(n, ess, ess / n, k, khat_label(k, n), float(log_mean_exp(lw)),
                             float(normalized_weights(lw).max()))
