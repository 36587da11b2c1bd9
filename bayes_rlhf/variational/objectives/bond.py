"""Best-of-N distillation: BOND (Sessa et al. 2024) and vBoN (Amini et al. 2024).

The best of N draws of pi0 (ties broken uniformly) has, with F = P_pi0(R < r(x)) and
G = P_pi0(R = r(x)) the reward's law under pi0 at x's level (``samplers.best_of_n``)::

    BoN_N(x) = pi0(x) ((F + G)^N - F^N) / G = pi0(x) exp(r_N(x))
    r_N(x)   = log sum_{j=0}^{N-1} (F + G)^j F^(N-1-j)      (-> log N + (N-1) log F without ties)

so BoN_N is the posterior of the Target (pi0, r_N, beta = 1), whose Z is 1. Both objectives fit q
to that target (``bon_target``; the record's ``retarget`` builds it once before training)::

    bond   Jeffreys KL(BoN_N || q) + KL(q || BoN_N): f-DPG's "jeffreys" loss on it (``fdpg.py``),
           from policy or prior samples
    vbon   reverse KL(q || BoN_N): RLOO on it, i.e. KL-regularised RL with the reward
           r_N = (N - 1) log F + log N (plus the tie term) and beta = 1

The reward's law under pi0, per prompt (``RewardLevels``): exact ("exact": the enumerated table of
pi0, i.e. an ExactPosterior's prior log-probs and rewards), or estimated ("prior": the empirical law
of M prior draws, each of mass 1/M; r_N is then that of the best of N draws from the empirical law).
A reward that matches no level (a prior draw never saw it) takes G = 0, and one below every level
takes F = half the smallest level's mass, so r_N stays finite. The history's reward columns are
r_N's, and its "objective" column is then E_q[r_N] - KL(q || pi0) = -KL(q || BoN_N) (Z = 1).
Measure a run with ``train_policy(..., evaluator=True)`` (the fitted target's posteriors) or with
``bon_posterior(post, N)``. r_N is very negative on low rewards (-6.3 nats on 12% of pi0 for N = 4
on the default model), so the gradients are noisier than for pi*: there 64 samples per prompt at
lr 1e-3 reached KL(q || BoN_4) 0.008-0.021 in 600 steps (seeds 0-4, BOND and vBoN), the defaults
(32, 1e-3) 0.031-0.048 in 300. At lr 2e-3 a run can cross a sharp ridge of the loss: one vBoN run
went from 0.016 to 9 nats in a single optimiser step (its largest parameter change 0.004).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from bayes_rlhf._checks import check_generator
from bayes_rlhf.errors import ConfigError, RewardError
from bayes_rlhf.exact.posterior import ExactPosterior
from bayes_rlhf.exact.from_target import exact_posterior
from bayes_rlhf.logweights import group_logsumexp, normalized_log_weights
from bayes_rlhf.rewards.base import evaluate_reward, reward_name
from bayes_rlhf.samplers._common import as_prompts
from bayes_rlhf.target import Target
from bayes_rlhf.variational.objectives.base import Objective, ObjectiveOutput, PolicyBatch
from bayes_rlhf.variational.objectives.fdpg import f_divergence_loss
from bayes_rlhf.variational.objectives.rloo import rloo_loss
from bayes_rlhf.variational.settings import BON_QUANTILES, BoNConfig, RLOOConfig, check_int_at_least
from bayes_rlhf.variational.sources import POLICY, PRIOR

#: rewards closer than this (relative, and absolute below 1) count as the same level
LEVEL_TOL = 1e-9


@dataclass(frozen=True)
class RewardLevels:
    """The reward's law under pi0 for one prompt: distinct levels and their masses (normalised to 1).

    Attributes
    ----------
    levels : Tensor [L]
        Sorted distinct rewards (float64; -inf allowed).
    log_mass : Tensor [L]
        log G of each level; logsumexp is 0.
    """

    levels: torch.Tensor
    log_mass: torch.Tensor

    @classmethod
    def from_table(cls, rewards: torch.Tensor, log_probs: torch.Tensor) -> "RewardLevels":
        """From an enumerated table: rewards [K] and pi0's log-probs [K] of every completion."""
        rewards, log_probs = rewards.double().cpu(), log_probs.double().cpu()
        keep = torch.isfinite(log_probs)
        levels, inv = torch.unique(rewards[keep], sorted=True, return_inverse=True)
        lp = log_probs[keep]
        return cls(levels, normalized_log_weights(group_logsumexp(lp, inv, levels.numel())))

    @classmethod
    def from_samples(cls, rewards: torch.Tensor) -> "RewardLevels":
        """The empirical law of M prior draws' rewards [M] (each of mass 1/M)."""
        return cls.from_table(rewards, torch.zeros(rewards.numel(), dtype=torch.float64))

    def log_ratio(self, rewards: torch.Tensor, n: int) -> torch.Tensor:
        """r_N = log BoN_N(x) - log pi0(x) of completions with these rewards [m] -> [m] (float64)."""
        r = rewards.double().cpu()
        log_fg = torch.logcumsumexp(self.log_mass, 0)                        # log(F + G) per level
        log_f = torch.cat([torch.tensor([-math.inf], dtype=torch.float64), log_fg[:-1]])  # log F per level
        j = torch.arange(n, dtype=torch.float64)
        terms = j[None] * log_fg[:, None] + (n - 1 - j)[None] * log_f[:, None]
        terms[:, -1] = (n - 1) * log_fg  # j = N - 1: F^0 = 1, also where F = 0 (0 * -inf above)
        at_level = torch.logsumexp(terms, 1)                                 # [L]
        idx = torch.searchsorted(self.levels, r)                             # levels strictly below r
        floor = self.log_mass.min() - math.log(2.0)
        below = torch.where(idx > 0, log_fg[(idx - 1).clamp(min=0)], floor)   # log F of a level not seen
        out = math.log(n) + (n - 1) * below
        last = self.levels.numel() - 1
        for side in (idx - 1, idx):  # the level just below r or the one at or above it, if r is that level
            s = side.clamp(0, last)
            same = (side >= 0) & (side <= last) & torch.isclose(self.levels[s], r, rtol=LEVEL_TOL, atol=LEVEL_TOL)
            out = torch.where(same, at_level[s], out)
        return out


class BestOfNReward:
    """The reward r_N(c, x) of the module docstring, per prompt: at beta = 1 its posterior is BoN_N.

    Parameters
    ----------
    base : reward
        The reward best-of-N ranks by.
    n : int
    levels : dict str -> RewardLevels
        The base reward's law under pi0 for each prompt.
    """

    def __init__(self, base, n: int, levels: dict[str, RewardLevels]):
        self.base, self.n, self.levels = base, n, dict(levels)
        self.name = f"best_of_{n}({reward_name(base)})"

    def score_batch(self, lm, prompts: Sequence[str], ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        r = evaluate_reward(self.base, lm, list(prompts), ids, mask).double().cpu()
        out = torch.empty_like(r)
        for p in dict.fromkeys(prompts):
            if p not in self.levels:
                raise RewardError(f"{self.name} knows the reward's law under pi0 for {sorted(self.levels)}, not "
                                  f"{p!r}; build the target with bon_target(..., prompts) including that prompt")
            rows = torch.tensor([q == p for q in prompts])
            out[rows] = self.levels[p].log_ratio(r[rows], self.n)
        return out

    def __repr__(self) -> str:
        return f"BestOfNReward({self.name}, prompts={len(self.levels)})"


def bon_target(target: Target, n: int, prompts: str | Sequence[str], quantile: str = "exact",
               num_samples: int = 1024, generator: torch.Generator | None = None,
               posteriors: dict[str, ExactPosterior] | None = None) -> Target:
    """The Target (pi0, r_N, beta = 1) whose posterior is the best-of-``n`` law of ``target.prior``.

    Parameters
    ----------
    target : Target
        Its prior, reward and ``max_new_tokens`` (its beta plays no part).
    n : int
        N >= 1.
    prompts : str or sequence of str
        The prompts the new target's reward knows.
    quantile : {"exact", "prior"}
        The reward's law under pi0 from enumeration (``posteriors`` where given, for any beta), or
        from ``num_samples`` prior draws per prompt (with ``generator``).
    """
    if not isinstance(target, Target):
        raise ConfigError(f"bon_target takes a bayes_rlhf.Target, got {type(target).__name__}")
    n = check_int_at_least(n, "bon_n", 1)
    if quantile not in BON_QUANTILES:
        raise ConfigError(f"quantile must be one of {list(BON_QUANTILES)}, got {quantile!r}")
    num_samples = check_int_at_least(num_samples, "bon_quantile_samples", 2)
    check_generator(generator)
    prompts = as_prompts(target, prompts)
    posteriors = dict(posteriors or {})
    for p, post in posteriors.items():
        if not isinstance(post, ExactPosterior) or post.completion_ids.shape[1] != target.max_new_tokens:
            raise ConfigError(f"posteriors[{p!r}] must be an ExactPosterior of the target's prior and reward with "
                              f"T = {target.max_new_tokens}")
    levels = {}
    for p in prompts:
        if quantile == "exact":
            post = posteriors[p] if p in posteriors else exact_posterior(target, p)
            levels[p] = RewardLevels.from_table(post.rewards, post.prior_log_probs)
        else:
            c = target.prior.sample([p], num_samples, target.max_new_tokens, generator=generator)
            levels[p] = RewardLevels.from_samples(target.rewards(p, c.ids, c.mask))
    return Target(prior=target.prior, reward=BestOfNReward(target.reward, n, levels), beta=1.0,
                  max_new_tokens=target.max_new_tokens)


def bon_posterior(posterior: ExactPosterior, n: int) -> ExactPosterior:
    """The exact best-of-``n`` law of the posterior's prior as an ExactPosterior (rewards r_N, beta 1).

    Its ``log_probs`` are ``best_of_n_log_probs(posterior, n)`` and its ``log_z`` is 0; use it as the
    ``evaluator`` of a "bond" or "vbon" run, or in ``compare(policy, ...)``.
    """
    n = check_int_at_least(n, "n", 1)
    r_n = RewardLevels.from_table(posterior.rewards, posterior.prior_log_probs).log_ratio(posterior.rewards, n)
    return ExactPosterior(posterior.prompt, posterior.completion_ids, posterior.mask, posterior.prior_log_probs,
                          r_n, 1.0, posterior.lm, posterior.vocabulary)


def _retarget(settings: BoNConfig, target: Target, prompts: list[str]) -> Target:
    gen = torch.Generator().manual_seed(settings.quantile_seed)
    return bon_target(target, settings.n, prompts, settings.quantile, settings.quantile_samples, gen)


def bond_objective_loss(batch: PolicyBatch, settings: BoNConfig) -> ObjectiveOutput:
    """BOND: Jeffreys divergence to BoN_N (the batch's rewards are r_N, beta 1)."""
    return f_divergence_loss(batch, "jeffreys", baseline=settings.proposal == "policy")


def vbon_objective_loss(batch: PolicyBatch, settings: BoNConfig) -> ObjectiveOutput:
    """vBoN: reverse KL(q || BoN_N) by RLOO (the batch's rewards are r_N, beta 1)."""
    return rloo_loss.loss(batch, RLOOConfig())


bond_loss = Objective("bond", bond_objective_loss, settings="bon",
                      source=lambda s: POLICY if s.proposal == "policy" else PRIOR, retarget=_retarget,
                      fixed_point="BoN_N (exact with bon_quantile='exact'; else the empirical quantile's)")
vbon_loss = Objective("vbon", vbon_objective_loss, settings="bon", retarget=_retarget,
                      fixed_point="BoN_N (exact with bon_quantile='exact'; else the empirical quantile's)")
