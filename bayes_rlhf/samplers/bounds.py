"""Two-sided stochastic bounds on log Z and the KL sandwich of a proposal.

With w(x) = pi0(x) exp(r / beta) / q(x), K inner samples, and posterior samples x* ~ pi*
(from ``ExactPosterior.sample`` or ``exact_rejection_sample``)::

    lower_K = E_{x_1..K ~ q}[ log (1/K) sum_k w(x_k) ]                     <= log Z   (IWAE; SMC log Z_hat too)
    upper_K = E_{x* ~ pi*, x_2..K ~ q}[ log (1/K) (w(x*) + sum_k w(x_k)) ] >= log Z   (BDMC / EUBO)

lower_1 = log Z - KL(q || pi*) (the ELBO) and upper_1 = log Z + KL(pi* || q) (the EUBO), so
with any lower bound L and upper bound U on log Z::

    KL(q || pi*) <= U - lower_1        KL(pi* || q) <= upper_1 - L

which sandwiches a proposal's divergences on models far too large to enumerate.
Every estimate comes with its Monte Carlo standard error.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from bayes_rlhf._checks import check_generator
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.estimate import BoundEstimate, Estimate  # noqa: F401 (BoundEstimate: the old name)
from bayes_rlhf.logweights import log_mean_exp
from bayes_rlhf.models.causal_lm import CausalLM
from bayes_rlhf.models.completions import Completions
from bayes_rlhf.samplers._common import as_prompts, check_count, check_proposal_lm, check_target, prior_log_probs
from bayes_rlhf.samplers.importance import draw_proposals, weigh
from bayes_rlhf.target import Target


def log_z_lower_bound(log_z_estimates: torch.Tensor | list) -> Estimate:
    """Stochastic lower bound from R independent estimates log Z_hat (IS or SMC): E[log Z_hat] <= log Z."""
    t = torch.as_tensor(log_z_estimates, dtype=torch.float64).reshape(-1)
    if t.numel() < 1 or not torch.isfinite(t).all():
        raise ConfigError("log_z_estimates must be a non-empty set of finite numbers")
    return Estimate.of_terms(t, "lower")


def _single_prompt(target: Target, prompt: str) -> str:
    if not isinstance(prompt, str):
        raise ConfigError("bounds are computed for one prompt at a time; pass a str")
    return as_prompts(target, prompt)[0]


def lower_bound(target: Target, prompt: str, num_samples: int, *, proposal: CausalLM | None = None,
                num_inner: int = 1, generator: torch.Generator | None = None) -> Estimate:
    """lower_K with K = ``num_inner``, from ``num_samples`` groups of K proposals (K = 1: the ELBO)."""
    check_target(target)
    num_samples = check_count(num_samples, "num_samples")
    num_inner = check_count(num_inner, "num_inner")
    check_generator(generator)
    q = check_proposal_lm(target, proposal)
    prompt = _single_prompt(target, prompt)
    comps = draw_proposals(target, q, [prompt], num_samples * num_inner, generator=generator)
    log_w, _, _ = weigh(target, q, [prompt], comps)
    terms = log_mean_exp(log_w.view(num_samples, num_inner), dim=-1)
    return Estimate.of_terms(terms, "lower")


def upper_bound(target: Target, prompt: str, posterior_samples: Completions, *, proposal: CausalLM | None = None,
                num_inner: int = 1, generator: torch.Generator | None = None) -> Estimate:
    """upper_K with K = ``num_inner``: one exact posterior sample and K - 1 proposals per term.

    Parameters
    ----------
    posterior_samples : Completions
        Exact samples of pi*(. | prompt): ``source="exact"``, as ``ExactPosterior.sample`` and
        ``exact_rejection_sample`` return them. Approximate samples (SIR, SMC particles, a policy's
        draws) give no bound at all (their estimate can fall below log Z) and are refused; samples
        known to be exact from elsewhere can be marked with ``dataclasses.replace(c, source="exact")``.
    """
    check_target(target)
    num_inner = check_count(num_inner, "num_inner")
    check_generator(generator)
    q = check_proposal_lm(target, proposal)
    prompt = _single_prompt(target, prompt)
    if not isinstance(posterior_samples, Completions) or len(posterior_samples) < 1:
        raise ConfigError("posterior_samples must be a non-empty Completions of exact posterior samples")
    if posterior_samples.source != "exact":
        raise ConfigError(f"posterior_samples have source={posterior_samples.source!r}, not 'exact': an upper "
                          "bound on log Z needs exact posterior samples (ExactPosterior.sample or "
                          "exact_rejection_sample); approximate ones (SIR, SMC) can land below log Z")
    if posterior_samples.ids.shape[1] != target.max_new_tokens:
        raise ConfigError(f"posterior_samples have {posterior_samples.ids.shape[1]} columns, the target's "
                          f"max_new_tokens is {target.max_new_tokens}")
    ids, mask = posterior_samples.ids, posterior_samples.mask
    m = ids.shape[0]
    lq = q.score(prompt, ids, mask).sum(-1).double().cpu()
    lp0 = prior_log_probs(target, q, [prompt] * m, ids, mask, lq)
    log_w_star = lp0 + target.rewards(prompt, ids, mask) / target.beta - lq
    if (log_w_star == -math.inf).any():
        raise ConfigError("a posterior sample has zero target mass: it is not a sample of this target's posterior")
    if num_inner == 1:
        return Estimate.of_terms(log_w_star, "upper")
    comps = draw_proposals(target, q, [prompt], m * (num_inner - 1), generator=generator)
    log_w, _, _ = weigh(target, q, [prompt], comps)
    all_w = torch.cat([log_w_star[:, None], log_w.view(m, num_inner - 1)], dim=1)
    return Estimate.of_terms(log_mean_exp(all_w, dim=-1), "upper")


@dataclass(frozen=True)
class KLSandwich:
    """Bounds on log Z and on the proposal's KL divergences to pi* (nats).

    ``log_z_lower <= log Z <= log_z_upper``; ``kl_q_posterior <= kl_q_posterior_max`` and
    ``kl_posterior_q <= kl_posterior_q_max`` (up to Monte Carlo error: each ``*_se``).
    """

    log_z_lower: float
    log_z_lower_se: float
    log_z_upper: float
    log_z_upper_se: float
    elbo: float
    eubo: float
    kl_q_posterior_max: float
    kl_q_posterior_max_se: float
    kl_posterior_q_max: float
    kl_posterior_q_max_se: float

    def as_dict(self) -> dict:
        return asdict(self)


_ARTICLE = {"lower": "a lower", "upper": "an upper"}


def _check_side(arg: str, est, side: str) -> None:
    """ConfigError unless ``est`` is None or an Estimate bounding log Z from ``side`` (or unlabelled)."""
    if est is None:
        return
    if not isinstance(est, Estimate):
        raise ConfigError(f"{arg} must be an Estimate (BoundEstimate: from lower_bound / upper_bound), "
                          f"got {type(est).__name__}")
    if est.side not in (None, side):
        helper = "lower_bound or log_z_lower_bound" if side == "lower" else "upper_bound with exact samples"
        raise ConfigError(f"{arg} is {_ARTICLE[est.side]} bound on log Z where {_ARTICLE[side]} bound is "
                          f"expected; pass the result of {helper}")


def kl_sandwich(elbo: Estimate, eubo: Estimate, log_z_lower: Estimate | None = None,
                log_z_upper: Estimate | None = None) -> KLSandwich:
    """Combine a proposal's ELBO and EUBO (K = 1) with the best bounds on log Z.

    ``log_z_lower`` defaults to the ELBO, ``log_z_upper`` to the EUBO (tighter ones come from
    SMC with many particles, or ``lower_bound``/``upper_bound`` with a larger ``num_inner``).
    An upper bound must come from ``upper_bound`` with exact posterior samples; an estimate
    whose ``side`` is the wrong one for its argument is a ConfigError.
    """
    for arg, est, side in (("elbo", elbo, "lower"), ("eubo", eubo, "upper"), ("log_z_lower", log_z_lower, "lower"),
                           ("log_z_upper", log_z_upper, "upper")):
        _check_side(arg, est, side)
    lo = log_z_lower if log_z_lower is not None else elbo
    hi = log_z_upper if log_z_upper is not None else eubo
    if lo.value > hi.value + 3 * math.hypot(lo.stderr, hi.stderr):
        raise ConfigError(f"the lower bound {lo.value:.4f} exceeds the upper bound {hi.value:.4f} beyond "
                          "Monte Carlo error: the posterior samples are not from this target's posterior")
    return KLSandwich(lo.value, lo.stderr, hi.value, hi.stderr, elbo.value, eubo.value,
                      hi.value - elbo.value, math.hypot(hi.stderr, elbo.stderr),
                      eubo.value - lo.value, math.hypot(eubo.stderr, lo.stderr))
