"""Resampling schemes, all of one signature ``(log_weights [N], num_samples, *, generator) -> indices [n]``.

Each draws n = num_samples indices, offspring counts N_i with E[N_i] = n * w_i (w the normalised weights), so the
SMC estimate of Z stays unbiased whichever is used::

    multinomial  u_k ~ U(0, 1) i.i.d.                 i_k = F^-1(u_k)
    stratified   u_k = (k + U_k) / n,  U_k i.i.d.      i_k = F^-1(u_k)
    systematic   u_k = (k + U) / n,    one U           i_k = F^-1(u_k)
    residual     floor(n w_i) copies of i, then multinomial on the remainder

F^-1 is the inverse CDF of the weights; a zero-weight index is never drawn. The indices
come back sorted (except residual's multinomial tail), which keeps KV-cache rows of the
same ancestor together. A function of the older signature ``(generator, log_weights, n)`` given to
``get_resampler`` still works, with a DeprecationWarning.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Callable

import torch

from bayes_rlhf._checks import check_generator, did_you_mean, is_integer
from bayes_rlhf.errors import ConfigError, NoMassError

#: ``resampler(log_weights, num_samples, generator=generator) -> indices``
Resampler = Callable[..., torch.Tensor]


def _weights(log_weights: torch.Tensor, n: int, generator) -> tuple[torch.Tensor, int]:
    """Checked normalised weights (float64 [N], CPU) and n as a Python int."""
    check_generator(generator)
    if not is_integer(n) or n < 1:
        raise ConfigError(f"the number of draws num_samples must be an integer >= 1, got {n!r}")
    n = int(n)
    if log_weights.dim() != 1 or log_weights.numel() == 0:
        raise ConfigError(f"log_weights must be a non-empty 1-D tensor, got shape {tuple(log_weights.shape)}")
    lw = log_weights.detach().double().cpu()
    if torch.isnan(lw).any():
        raise ConfigError("log_weights contain NaN; check the reward and the proposal's log-probs")
    if (lw == float("inf")).any():
        raise ConfigError("log_weights contain +inf; the target or proposal log-density is not finite")
    lse = torch.logsumexp(lw, 0)
    if not torch.isfinite(lse):
        raise NoMassError("every log-weight is -inf: no particle has target mass, so there is "
                          "nothing to resample")
    return torch.exp(lw - lse), n


def _inverse_cdf(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Indices i with F(i-1) <= u < F(i) for sorted or unsorted u in [0, 1)."""
    cdf = w.cumsum(0)
    idx = torch.searchsorted(cdf, u * cdf[-1], right=True)
    last = int(torch.nonzero(w > 0).max())
    return idx.clamp(max=last)


def multinomial(log_weights: torch.Tensor, num_samples: int, *,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """n i.i.d. draws from the normalised weights (LongTensor [n], sorted)."""
    w, n = _weights(log_weights, num_samples, generator)
    u = torch.rand(n, generator=generator, dtype=torch.float64).sort().values
    return _inverse_cdf(w, u)


def stratified(log_weights: torch.Tensor, num_samples: int, *,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """One uniform draw in each of the n strata [k/n, (k+1)/n) (LongTensor [n], sorted)."""
    w, n = _weights(log_weights, num_samples, generator)
    u = (torch.arange(n, dtype=torch.float64) + torch.rand(n, generator=generator, dtype=torch.float64)) / n
    return _inverse_cdf(w, u)


def systematic(log_weights: torch.Tensor, num_samples: int, *,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """One shared uniform offset, n evenly spaced points (LongTensor [n], sorted)."""
    w, n = _weights(log_weights, num_samples, generator)
    u = (torch.arange(n, dtype=torch.float64) + torch.rand(1, generator=generator, dtype=torch.float64)) / n
    return _inverse_cdf(w, u)


def residual(log_weights: torch.Tensor, num_samples: int, *,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """floor(n w_i) deterministic copies, the rest multinomial on the residuals (LongTensor [n])."""
    w, n = _weights(log_weights, num_samples, generator)
    counts = torch.floor(n * w).long()
    rest = n - int(counts.sum())
    idx = torch.repeat_interleave(torch.arange(w.numel()), counts)
    if rest > 0:
        res = (n * w - counts.double()).clamp(min=0.0)
        if float(res.sum()) <= 0:  # rounding left no residual mass: fall back to the weights
            res = w
        u = torch.rand(rest, generator=generator, dtype=torch.float64).sort().values
        idx = torch.cat([idx, _inverse_cdf(res / res.sum(), u)])
    return idx


RESAMPLERS: dict[str, Resampler] = {
    "multinomial": multinomial,
    "stratified": stratified,
    "systematic": systematic,
    "residual": residual,
}


def get_resampler(scheme: str | Resampler) -> Resampler:
    """The resampler named ``scheme`` (or ``scheme`` itself if it is a callable taking ``generator=``)."""
    if callable(scheme):
        return scheme if _takes_generator_keyword(scheme) else _legacy(scheme)
    if scheme not in RESAMPLERS:
        raise ConfigError(f"unknown resampling scheme {scheme!r}; choose one of {sorted(RESAMPLERS)} "
                          "or pass a function (log_weights, num_samples, *, generator) -> indices"
                          f"{did_you_mean(scheme, RESAMPLERS)}")
    return RESAMPLERS[scheme]


def _takes_generator_keyword(fn) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # no signature to read (a builtin): take it as the current form
        return True
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return True
    first = next(iter(params), None)
    g = params.get("generator")
    return g is not None and first != "generator" and g.kind in (g.KEYWORD_ONLY, g.POSITIONAL_OR_KEYWORD)


def _legacy(fn) -> Resampler:
    """A resampler of the older signature ``(generator, log_weights, n)`` in the current one."""
    warnings.warn("a resampler taking (generator, log_weights, n) is deprecated; write it as "
                  "(log_weights, num_samples, *, generator=None)", DeprecationWarning, stacklevel=3)

    def resample(log_weights, num_samples, *, generator=None):
        return fn(generator, log_weights, num_samples)
    return resample
