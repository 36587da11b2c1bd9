"""Exact rejection sampling from pi* on any model whose reward is bounded above.

Propose x ~ pi0, accept with probability exp((r(x) - r_max) / beta) <= 1. Accepted draws are
exact posterior samples; the acceptance rate estimates Z * exp(-r_max / beta).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bayes_rlhf._checks import check_generator, check_int, check_real
from bayes_rlhf._deprecation import positional_generator, renamed_keywords
from bayes_rlhf.errors import ConfigError, RewardError
from bayes_rlhf.models.completions import Completions
from bayes_rlhf.target import Target


@dataclass(frozen=True)
class RejectionResult:
    """Accepted samples, how many proposals they took, and log Z estimated from the rate."""

    samples: Completions
    rewards: torch.Tensor
    num_proposals: int
    acceptance_rate: float
    log_z: float


@renamed_keywords(n="num_samples")
@positional_generator(4)
def exact_rejection_sample(target: Target, prompt: str, num_samples: int, reward_max: float, *,
                           generator: torch.Generator | None = None, batch_size: int = 256,
                           max_proposals: int = 1_000_000) -> RejectionResult:
    """``num_samples`` exact samples from the posterior of ``target`` for ``prompt`` (``n=``: deprecated).

    Parameters
    ----------
    reward_max : float
        An upper bound on the reward; a proposal whose reward exceeds it raises ``RewardError``.
    generator : torch.Generator, optional
        ``torch.Generator().manual_seed(seed)``; a plain seed is a ``ConfigError``.
    max_proposals : int
        Give up (``ConfigError``) after this many proposals, e.g. when the rate is tiny.
    """
    n = check_int(num_samples, "num_samples", 1)
    reward_max = check_real(reward_max, "reward_max")
    batch_size = check_int(batch_size, "batch_size", 1)
    max_proposals = check_int(max_proposals, "max_proposals", 1)
    check_generator(generator)
    T = target.max_new_tokens
    kept: list[Completions] = []
    kept_r: list[torch.Tensor] = []
    proposals = accepted = 0
    while accepted < n:
        if proposals >= max_proposals:
            raise ConfigError(f"only {accepted} of {n} samples accepted after {proposals} proposals "
                              f"(rate {accepted / proposals:.2e}); raise max_proposals or lower reward_max")
        prop = target.prior.sample(prompt, batch_size, T, generator=generator)
        r = target.rewards(prompt, prop.ids, prop.mask)
        if bool((r > reward_max).any()):
            raise RewardError(f"a reward of {float(r.max()):.4g} exceeds reward_max={reward_max}; "
                              "exact rejection needs a true upper bound")
        u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
        acc = torch.nonzero(u < torch.exp((r - reward_max) / target.beta)).squeeze(-1)
        proposals += batch_size
        accepted += acc.numel()
        kept.append(prop.select(acc))
        kept_r.append(r[acc])
    ids = torch.cat([c.ids for c in kept])[:n]
    mask = torch.cat([c.mask for c in kept])[:n]
    lp = torch.cat([c.log_probs for c in kept])[:n]
    rate = accepted / proposals
    samples = Completions(ids, mask, lp, torch.zeros(n, dtype=torch.long), source="exact")
    return RejectionResult(samples, torch.cat(kept_r)[:n], proposals, rate,
                           math.log(rate) + reward_max / target.beta if accepted else -math.inf)
