"""Best-of-N: draw N completions from the prior, keep the one with the highest reward.

The practitioners' baseline. Sampling, per output::

    x_1..x_N ~ q(. | c);  keep x_j, j = argmax_i r(x_i), ties broken uniformly at random

Exact distribution over an enumerated table (prior p, rewards r). Group completions into
reward levels; for the level of x let F = P_p(R < r(x)) and G = P_p(R = r(x)). The best of N
lands in that level with probability (F + G)^N - F^N and, by symmetry of the tie-break, is
then distributed as p restricted to the level, so::

    p_BoN(x) = p(x) / G * ((F + G)^N - F^N)          # = p(x) N F^(N-1) when no ties, N -> small p

Its KL to the prior is at most ``log N - (N - 1) / N`` (equality without ties as p -> continuous).
Best-of-N is not a consistent estimator of pi*; the N proposals still give an unbiased
importance estimate of Z, which is what ``log_z`` reports.
"""

from __future__ import annotations

import math
import time
from typing import Sequence

import torch

from bayes_rlhf._checks import check_generator
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.exact.posterior import ExactPosterior
from bayes_rlhf.logweights import group_logsumexp
from bayes_rlhf.models.causal_lm import CausalLM
from bayes_rlhf.samplers._common import check_count
from bayes_rlhf.samplers.importance import importance_sample
from bayes_rlhf.samplers.weighted import WeightedSamples
from bayes_rlhf.target import Target


def best_of_n(target: Target, prompt: str | Sequence[str], n: int, num_samples: int = 1, *,
              proposal: CausalLM | None = None, generator: torch.Generator | None = None,
              batch_size: int = 1024) -> WeightedSamples:
    """``num_samples`` best-of-``n`` completions per prompt.

    Parameters
    ----------
    target : Target
    prompt : str or sequence of str
    n : int
        Candidates per output (N >= 1).
    num_samples : int
        Independent best-of-N outputs per prompt.
    proposal : CausalLM, optional
        Where candidates come from (default: the prior).
    generator : torch.Generator, optional

    Returns
    -------
    WeightedSamples
        ``num_samples * P`` rows (equal log-weights 0: best-of-N samples are not reweighted),
        their rewards, and ``log_z`` [P], the importance estimate of log Z from all candidates.
    """
    n = check_count(n, "n")
    num_samples = check_count(num_samples, "num_samples")
    check_generator(generator)
    t0 = time.perf_counter()
    cand = importance_sample(target, prompt, n * num_samples, proposal=proposal, generator=generator,
                             batch_size=batch_size)
    r, prompts = cand.rewards, cand.prompts
    # rows are grouped by prompt: [P * num_samples, n] groups of candidates
    groups = r.view(len(prompts) * num_samples, n)
    best = groups.max(-1, keepdim=True).values
    tie_break = torch.rand(groups.shape, generator=generator, dtype=torch.float64)
    pick = torch.where(groups == best, tie_break, -1.0).argmax(-1)
    idx = torch.arange(groups.shape[0]) * n + pick
    info = {"n": n, "num_candidates": n * num_samples, "seconds": time.perf_counter() - t0}
    return WeightedSamples(cand.ids[idx], cand.mask[idx], torch.zeros(idx.numel(), dtype=torch.float64),
                           r[idx], cand.log_z, cand.prompt_index[idx], prompts, target.prior.vocabulary, None, info)


def best_of_n_log_probs(posterior: ExactPosterior, n: int, base_log_probs: torch.Tensor | None = None) -> torch.Tensor:
    """Exact log-probabilities [K] of best-of-``n`` over the posterior's table.

    Parameters
    ----------
    posterior : ExactPosterior
        Supplies the table, its rewards and (by default) the prior the candidates come from.
    n : int
    base_log_probs : Tensor [K], optional
        log q of the candidate distribution on the table (default: the prior).

    Returns
    -------
    Tensor [K]
        log p_BoN(x), float64; ties in the reward are broken uniformly at random.
    """
    n = check_count(n, "n")
    lp = (posterior.prior_log_probs if base_log_probs is None else base_log_probs).double()
    if lp.shape != posterior.rewards.shape:
        raise ConfigError(f"base_log_probs must have shape {tuple(posterior.rewards.shape)}, got {tuple(lp.shape)}")
    levels, inv = torch.unique(posterior.rewards, sorted=True, return_inverse=True)
    L = levels.numel()
    log_g = group_logsumexp(lp, inv, L)                    # log G per level
    log_fg = torch.logcumsumexp(log_g, 0)                  # log (F + G)
    log_f = torch.cat([torch.tensor([-math.inf], dtype=torch.float64), log_fg[:-1]])
    # log((F + G)^n - F^n) = n log(F+G) + log(1 - e^ratio), ratio = n log(F / (F+G)) = -n log1p(G / F):
    # no difference of nearby logs where G << F, and log(1 - e^x) in its stable two-branch form
    ratio = torch.where(torch.isfinite(log_f), -n * torch.log1p(torch.exp(log_g - log_f)), -math.inf)
    log_top = n * log_fg + torch.where(ratio > -math.log(2), torch.log(-torch.expm1(ratio)),
                                       torch.log1p(-torch.exp(ratio)))
    out = lp - log_g[inv] + log_top[inv]
    return torch.where(torch.isfinite(lp), out, -math.inf)


def best_of_n_kl(posterior: ExactPosterior, n: int) -> float:
    """Exact KL(p_BoN || pi0) in nats over the posterior's table."""
    lb = best_of_n_log_probs(posterior, n)
    q = lb.exp()
    pos = q > 0
    return float((q[pos] * (lb[pos] - posterior.prior_log_probs[pos])).sum())


def best_of_n_kl_bound(n: int) -> float:
    """The analytic bound KL(p_BoN || pi0) <= log n - (n - 1) / n."""
    n = check_count(n, "n")
    return math.log(n) - (n - 1) / n


def best_of_n_mean_reward(posterior: ExactPosterior, n: int) -> float:
    """Exact E_BoN[r] over the posterior's table."""
    q = best_of_n_log_probs(posterior, n).exp()
    pos = q > 0
    return float((q[pos] * posterior.rewards[pos]).sum())
