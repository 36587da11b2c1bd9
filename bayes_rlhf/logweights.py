"""Log-weight arithmetic, in one place: every sampler, diagnostic and objective calls these.

Given unnormalised log-weights ``lw_i`` of n draws (float64; -inf is a draw with no target mass)::

    log_mean_exp(lw)        = logsumexp(lw) - log n          # importance estimate of log Z
    normalized_log_weights  = lw - logsumexp(lw)             # log w_i, sum_i w_i = 1
    normalized_weights      = exp(normalized_log_weights)
    kish_ess(lw)            = 1 / sum_i w_i^2                # in [1, n]
    group_softmax(lw, g)    = w_i normalised within the rows i of each group g (a prompt)

No mass (every lw_i = -inf) has one behaviour everywhere: ``log_mean_exp`` is -inf, the
normalised log-weights are all -inf, the weights all 0 and the Kish ESS 0.0 (the set is worth no
draws). Callers that cannot go on without mass (a log Z to report, a resampling step) check for
it and raise ``NoMassError`` with a message about their own inputs. Empty input is
``EmptySamplesError``; NaN or +inf log-weights are ``ConfigError``.
"""

from __future__ import annotations

import math

import torch

from bayes_rlhf.errors import ConfigError


class EmptySamplesError(ConfigError):
    """A sample set is empty: there is nothing to estimate from."""


def check_log_weights(log_weights, name: str = "log_weights") -> torch.Tensor:
    """``log_weights`` as a 1-D float64 Tensor [n]; EmptySamplesError if empty, ConfigError on NaN / +inf."""
    # a list of Python floats is float64 already: torch.as_tensor would read it as float32
    lw = (log_weights.detach() if isinstance(log_weights, torch.Tensor)
          else torch.as_tensor(log_weights, dtype=torch.float64)).double()
    if lw.dim() > 1:
        raise ConfigError(f"{name} must be one weight per sample, a 1-d sequence [n]; got shape {tuple(lw.shape)}")
    lw = lw.reshape(-1)
    if lw.numel() == 0:
        raise EmptySamplesError(f"{name} is empty: draw at least one sample before computing diagnostics")
    if bool(torch.isnan(lw).any()) or bool((lw == math.inf).any()):
        raise ConfigError(f"{name} contains NaN or +inf; check the log-densities that produced them")
    return lw


def log_mean_exp(log_weights: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``logsumexp(lw, dim) - log n``: the importance-sampling estimate of log Z (-inf with no mass)."""
    return torch.logsumexp(log_weights, dim) - math.log(log_weights.shape[dim])


def normalized_log_weights(log_weights: torch.Tensor) -> torch.Tensor:
    """log w_i = lw_i - logsumexp(lw) of a 1-D Tensor [n] (all -inf stays all -inf)."""
    lse = torch.logsumexp(log_weights, 0)
    if not torch.isfinite(lse):
        return torch.full_like(log_weights, -math.inf)
    return log_weights - lse


def normalized_weights(log_weights) -> torch.Tensor:
    """Self-normalised weights [n] (float64, sum to 1; all 0 with no mass) from log-weights [n]."""
    return normalized_log_weights(check_log_weights(log_weights)).exp()


def kish_ess(log_weights) -> float:
    """Kish effective sample size ``1 / sum_i w_i^2`` of unnormalised log-weights [n]: in [1, n], 0.0 with no mass.

    Parameters
    ----------
    log_weights : Tensor or array [n]
        Unnormalised log-weights; -inf entries count as zero weight.
    """
    lw = normalized_log_weights(check_log_weights(log_weights))
    if not bool(torch.isfinite(lw).any()):
        return 0.0
    return float(torch.exp(-torch.logsumexp(2 * lw, 0)))


def group_sum(x: torch.Tensor, group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Sums of the rows of ``x`` [n, ...] within each group: Tensor [num_groups, ...]."""
    out = torch.zeros((num_groups,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    return out.index_add_(0, group, x)


def group_softmax(log_weights: torch.Tensor, group: torch.Tensor, num_groups: int | None = None) -> torch.Tensor:
    """Self-normalised weights within each group, per column: [n] or [n, K] -> same shape.

    ``group`` (LongTensor [n]) numbers the rows' groups 0..G-1. A group (column) with no mass
    gets weight 0 on every row.
    """
    lse = group_logsumexp(log_weights, group, num_groups)
    return torch.where(torch.isfinite(lse[group]), torch.exp(log_weights - lse[group]), 0.0)


def group_logsumexp(log_weights: torch.Tensor, group: torch.Tensor, num_groups: int | None = None) -> torch.Tensor:
    """logsumexp of the rows of ``log_weights`` [n] or [n, K] within each group: [G] or [G, K]
    (-inf for a group, or column, with no mass)."""
    g = int(group.max()) + 1 if num_groups is None else num_groups
    shape = (g,) + tuple(log_weights.shape[1:])
    idx = group.view((-1,) + (1,) * (log_weights.dim() - 1)).expand_as(log_weights)
    m = torch.full(shape, -math.inf, dtype=log_weights.dtype, device=log_weights.device)
    m = m.scatter_reduce(0, idx, log_weights, reduce="amax")
    safe = torch.where(torch.isfinite(m), m, 0.0)
    return safe + torch.log(group_sum(torch.exp(log_weights - safe[group]), group, g))


__all__ = ["EmptySamplesError", "check_log_weights", "log_mean_exp", "normalized_log_weights",
           "normalized_weights", "kish_ess", "group_sum", "group_softmax", "group_logsumexp"]
