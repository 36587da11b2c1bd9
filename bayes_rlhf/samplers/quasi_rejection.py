"""Quasi-rejection sampling (QRS): rejection with a constant c that need not bound P / q.

With the unnormalised target P(x) = pi0(x | c) exp(r / beta) and a proposal q::

    x ~ q;  accept with probability min(1, P(x) / (C q(x)))          (log C = log_c)
    accepted x ~ p_C(x) ∝ min(P(x), C q(x))                            -> pi* as C -> infinity
    acceptance rate = sum_x min(P(x), C q(x)) / C                      falls as C grows

Each accepted sample carries the weight max(1, P / (C q)) = P / min(P, C q), so the
self-normalised estimates from accepted samples are consistent for pi* at any C; the
importance weights of all proposals give the unbiased ``log_z``.
"""

from __future__ import annotations

import math
import time
from typing import Sequence

import torch

from bayes_rlhf._checks import check_generator, is_real
from bayes_rlhf.errors import ConfigError, NoMassError
from bayes_rlhf.exact.posterior import ExactPosterior
from bayes_rlhf.models.causal_lm import CausalLM
from bayes_rlhf.samplers._common import check_count
from bayes_rlhf.samplers.importance import importance_sample
from bayes_rlhf.samplers.weighted import WeightedSamples
from bayes_rlhf.target import Target


def _check_log_c(log_c) -> float:
    if not is_real(log_c) or not math.isfinite(log_c):
        raise ConfigError(f"log_c must be a finite number (the log of the QRS constant C), got {log_c!r}")
    return float(log_c)


def quasi_rejection_sample(target: Target, prompt: str | Sequence[str], num_proposals: int, log_c: float, *,
                           proposal: CausalLM | None = None, generator: torch.Generator | None = None,
                           batch_size: int = 1024) -> WeightedSamples:
    """Quasi-rejection sampling of the posterior of ``target``.

    Parameters
    ----------
    target : Target
    prompt : str or sequence of str
    num_proposals : int
        Proposals drawn per prompt.
    log_c : float
        log C. Larger C: closer to pi*, fewer acceptances. ``log_c >= max log(P / q)`` is exact
        rejection sampling.
    proposal : CausalLM, optional
        Default: the prior (then P / q = exp(r / beta)).
    generator : torch.Generator, optional

    Returns
    -------
    WeightedSamples
        The accepted rows, log-weights log max(1, P / (C q)), ``log_z`` [P] from all proposals,
        and ``info["acceptance_rate"]`` (Tensor [P]).

    Raises
    ------
    NoMassError
        Every proposal of a prompt has zero target mass, or none was accepted.
    """
    num_proposals = check_count(num_proposals, "num_proposals")
    log_c = _check_log_c(log_c)
    check_generator(generator)
    t0 = time.perf_counter()
    ws = importance_sample(target, prompt, num_proposals, proposal=proposal, generator=generator,
                           batch_size=batch_size)
    log_ratio = ws.log_weights - log_c  # log P - log q - log C
    u = torch.rand(log_ratio.shape, generator=generator, dtype=torch.float64)
    accept = torch.log(u) < log_ratio.clamp(max=0.0)
    rate = torch.zeros(len(ws.prompts), dtype=torch.float64).index_add_(0, ws.prompt_index, accept.double())
    rate = rate / num_proposals
    for p, prompt_p in enumerate(ws.prompts):
        if rate[p] == 0:
            raise NoMassError(f"no proposal for prompt {prompt_p!r} was accepted out of {num_proposals}; "
                              "lower log_c or draw more proposals")
    idx = torch.nonzero(accept).squeeze(-1)
    info = {"log_c": log_c, "num_proposals": num_proposals, "acceptance_rate": rate,
            "seconds": time.perf_counter() - t0}
    return WeightedSamples(ws.ids[idx], ws.mask[idx], log_ratio[idx].clamp(min=0.0), ws.rewards[idx], ws.log_z,
                           ws.prompt_index[idx], ws.prompts, target.prior.vocabulary, None, info)


def quasi_rejection_log_probs(posterior: ExactPosterior, log_c: float,
                              proposal_log_probs: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """The exact QRS distribution over the posterior's table and its acceptance rate.

    Parameters
    ----------
    posterior : ExactPosterior
    log_c : float
    proposal_log_probs : Tensor [K], optional
        log q on the table (default: the prior). q's mass off the table is never accepted.

    Returns
    -------
    (Tensor [K], float)
        log p_C(x) ∝ log min(P(x), C q(x)), and the acceptance rate sum_x min(P, C q) / C.
    """
    log_c = _check_log_c(log_c)
    lq = (posterior.prior_log_probs if proposal_log_probs is None else proposal_log_probs).double()
    if lq.shape != posterior.rewards.shape:
        raise ConfigError(f"proposal_log_probs must have shape {tuple(posterior.rewards.shape)}, got {tuple(lq.shape)}")
    log_p = posterior.prior_log_probs + posterior.rewards / posterior.beta
    log_min = torch.minimum(log_p, lq + log_c)
    lse = torch.logsumexp(log_min, 0)
    if not torch.isfinite(lse):
        raise NoMassError("the proposal puts no mass where the posterior has mass")
    return log_min - lse, math.exp(float(lse) - log_c)
