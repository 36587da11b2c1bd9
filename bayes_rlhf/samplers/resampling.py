"""Resampling schemes, all of one signature ``(generator, log_weights [N], n) -> indices [n]``.

Each draws offspring counts N_i with E[N_i] = n * w_i (w the normalised weights), so the
SMC estimate of Z stays unbiased whichever is used::

    multinomial  u_k ~ U(0, 1) i.i.d.                 i_k = F^-1(u_k)
    stratified   u_k = (k + U_k) / n,  U_k i.i.d.      i_k = F^-1(u_k)
    systematic   u_k = (k + U) / n,    one U           i_k = F^-1(u_k)
    residual     floor(n w_i) copies of i, then multinomial on the remainder

F^-1 is the inverse CDF of the weights; a zero-weight index is never drawn. The indices
come back sorted (except residual's multinomial tail), which keeps KV-cache rows of the
same ancestor together.
"""

from __future__ import annotations

from typing import Callable

import torch

from bayes_rlhf._checks import check_generator, is_integer
from bayes_rlhf.errors import ConfigError, NoMassError

Resampler = Callable[[torch.Generator | None, torch.Tensor, int], torch.Tensor]


def _weights(generator, log_weights: torch.Tensor, n: int) -> tuple[torch.Tensor, int]:
    """Checked normalised weights (float64 [N], CPU) and n as a Python int."""
    check_generator(generator)
    if not is_integer(n) or n < 1:
        raise ConfigError(f"the number of draws n must be an integer >= 1, got {n!r}")
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


def multinomial(generator: torch.Generator | None, log_weights: torch.Tensor, n: int) -> torch.Tensor:
    """n i.i.d. draws from the normalised weights (LongTensor [n], sorted)."""
    w, n = _weights(generator, log_weights, n)
    u = torch.rand(n, generator=generator, dtype=torch.float64).sort().values
    return _inverse_cdf(w, u)


def stratified(generator: torch.Generator | None, log_weights: torch.Tensor, n: int) -> torch.Tensor:
    """One uniform draw in each of the n strata [k/n, (k+1)/n) (LongTensor [n], sorted)."""
    w, n = _weights(generator, log_weights, n)
    u = (torch.arange(n, dtype=torch.float64) + torch.rand(n, generator=generator, dtype=torch.float64)) / n
    return _inverse_cdf(w, u)


def systematic(generator: torch.Generator | None, log_weights: torch.Tensor, n: int) -> torch.Tensor:
    """One shared uniform offset, n evenly spaced points (LongTensor [n], sorted)."""
    w, n = _weights(generator, log_weights, n)
    u = (torch.arange(n, dtype=torch.float64) + torch.rand(1, generator=generator, dtype=torch.float64)) / n
    return _inverse_cdf(w, u)


def residual(generator: torch.Generator | None, log_weights: torch.Tensor, n: int) -> torch.Tensor:
    """floor(n w_i) deterministic copies, the rest multinomial on the residuals (LongTensor [n])."""
    w, n = _weights(generator, log_weights, n)
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
    """The resampler named ``scheme`` (or ``scheme`` itself if it is a callable)."""
    if callable(scheme):
        return scheme
    if scheme not in RESAMPLERS:
        raise ConfigError(f"unknown resampling scheme {scheme!r}; choose one of {sorted(RESAMPLERS)} "
                          "or pass a function (generator, log_weights, n) -> indices")
    return RESAMPLERS[scheme]
