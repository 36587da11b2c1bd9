"""``moment_target``: the I-projection of a prior onto moment constraints, as a ``Target``.

Generation with Distributional Control (Khalifa et al., 2021): the distribution closest to pi0
in KL(. || pi0) whose features have means m is ``pi* = pi0 exp(lambda . phi) / Z``, a Target with
beta = 1 and reward lambda . phi. With several prompts one lambda is shared and the moments are
averaged over the prompts (conditional GDC). Pseudocode::

    validate everything (prompts, features, moments, method) before any model call
    table = exact:  each prompt enumerated once, phi evaluated on every completion
            snis:   N proposals per prompt (prior or a given proposal), importance weights
            smc:    N SMC particles per prompt for the current tilt pi0 exp(lambda_k . phi); the dual is
                    solved on them, and again on particles of the new tilt, until it stops moving
    check m is reachable on the table (UnreachableError naming the range)
    lambda = Newton on the convex dual mean_c log Z_c(lambda) - lambda . m      (dual.py)
    snis / smc: E_lambda[phi] re-estimated on N fresh draws: the moment error and its SE
    return Target(prior, MomentReward(lambda, phi, constraint, fit), beta=1, T)

A pointwise constraint (0 / -inf) restricts the support first: the result is then the
I-projection of pi0 restricted to the constraint.
"""

from __future__ import annotations

from typing import Sequence

import torch

from bayes_rlhf._checks import check_generator, check_int, check_real, is_real
from bayes_rlhf.control.dual import check_reachable, kl_to_prior, solve_dual
from bayes_rlhf.control.reward import MomentFit, MomentReward
from bayes_rlhf.control.tables import (AtomTable, check_prompts, exact_feature_table, is_reward, resolve_method,
                                       sampled_feature_table, smc_feature_table, snis_standard_error, tilt,
                                       zero_reward)
from bayes_rlhf.errors import ConfigError, RewardError
from bayes_rlhf.logweights import group_sum
from bayes_rlhf.rewards.base import reward_name
from bayes_rlhf.target import Target

def _check_features(features, moments) -> tuple[list, torch.Tensor]:
    features = [features] if is_reward(features) else list(features)
    if isinstance(moments, torch.Tensor):
        moments = moments.reshape(-1).tolist()
    elif is_real(moments):
        moments = [moments]
    else:
        moments = list(moments)
    if not features:
        raise ConfigError("moment_target needs at least one feature")
    for f in features:
        if not is_reward(f):
            raise RewardError(f"a feature must be a reward f(prompts, completions) or a TokenReward, got "
                              f"{type(f).__name__}")
    if len(moments) != len(features):
        raise ConfigError(f"{len(features)} features but {len(moments)} moments: give one target mean per feature")
    vals = [float(check_real(m, f"moment for {reward_name(f)!r}")) for m, f in zip(moments, features)]
    return features, torch.tensor(vals, dtype=torch.float64)


def moment_target(prior, prompts: str | Sequence[str], features, moments, max_new_tokens: int, *,
                  constraint=None, method: str = "auto", num_samples: int = 4096, proposal=None,
                  generator: torch.Generator | None = None, tol: float = 1e-10, max_iter: int = 100,
                  max_completions: int | None = None, progress: bool = False, rounds: int = 4) -> Target:
    """The I-projection ``pi0 exp(lambda . phi) / Z`` whose features have the given means.

    Parameters
    ----------
    prior : CausalLM
        pi0 (with its top-k truncation, if any).
    prompts : str or sequence of str
        One prompt, or P prompts sharing one lambda (the moments are then averaged over them).
    features : reward or sequence of rewards [d]
        phi_i: ``f(prompts, completions) -> floats`` or ``TokenReward``; finite values.
    moments : float or sequence of float [d]
        Target means m_i.
    max_new_tokens : int
    constraint : reward, optional
        A pointwise ``Constraint`` (0 or -inf) combined with the moments.
    method : {'auto', 'exact', 'snis', 'smc'}
        'exact' solves on enumerated tables (moments to ``tol``); 'snis' on ``num_samples``
        importance samples per prompt from ``proposal`` (the prior by default) and re-estimates the
        moments, with SEs, on as many fresh ones; 'smc' on ``num_samples`` SMC particles per prompt
        of the current tilt (``twist="prefix"``), re-solving on particles of each new tilt for up to
        ``rounds`` rounds, for moments the prior rarely reaches (where 'snis' has few effective
        draws; its SE treats the particles as independent, so it is too small where resampling
        duplicated many); 'auto' is 'exact' when the space fits, else 'snis'.
    generator : torch.Generator, optional
        Randomness of 'snis' and 'smc'.
    tol : float
        Moment accuracy of the dual solve on its table (features' units).
    rounds : int
        'smc': at most this many tilts to draw particles from; it stops early once a round's
        solution keeps >= 90% of its particles' effective sample size (the tilt barely moved).

    Returns
    -------
    Target
        beta = 1 and ``reward`` a ``MomentReward``: ``.coefficients`` (lambda), ``.features`` and
        ``.fit`` (a ``MomentFit``: achieved moments, SE, reachable ranges, KL to the prior).

    Raises
    ------
    UnreachableError
        A moment outside what the support can reach (the message names the reachable ranges).
    ConfigError, PromptError, RewardError
        Bad input, checked before the model is run.
    """
    base = Target(prior, zero_reward(), 1.0, max_new_tokens)  # checks prior and max_new_tokens
    prompts = check_prompts(base, prompts)
    features, m = _check_features(features, moments)
    if constraint is not None and not is_reward(constraint):
        raise RewardError(f"constraint must be a reward (e.g. a Constraint), got {type(constraint).__name__}")
    tol = check_real(tol, "tol", low=0.0, low_open=True)
    max_iter = check_int(max_iter, "max_iter", 1)
    method = resolve_method(method, prior, max_new_tokens, max_completions)
    if proposal is not None and method == "exact":
        raise ConfigError("a proposal is used by method='snis' only; pass method='snis' to sample from it")
    names = [reward_name(f) for f in features]
    if method != "exact":
        num_samples = check_int(num_samples, "num_samples", 2)
        rounds = check_int(rounds, "rounds", 1)
        check_generator(generator)
        if proposal is not None and method == "smc":
            raise ConfigError("a proposal is used by method='snis' only; 'smc' draws from the current tilt")

    def draw(lam):  # a sampled table: N draws per prompt (lam: the tilt SMC's particles follow)
        if method == "smc":
            return smc_feature_table(prior, prompts, max_new_tokens, features, constraint, lam, num_samples,
                                     generator=generator)
        return sampled_feature_table(prior, prompts, max_new_tokens, features, constraint, num_samples,
                                     proposal=proposal, generator=generator)

    if method == "smc":
        table, ranges, sol = _smc_rounds(draw, m, names, tol, max_iter, rounds)
    else:
        table = draw(None) if method == "snis" else exact_feature_table(prior, prompts, max_new_tokens, features,
                                                                         constraint, max_completions, progress)
        ranges = check_reachable(table, m, names)
        sol = solve_dual(table, m, tol, max_iter)
    achieved, se, ess = sol.tilt.means.mean(0), torch.zeros_like(m), ()
    if method != "exact":
        fresh = draw(sol.coefficients)
        ft = tilt(fresh, sol.coefficients)
        achieved, se = ft.means.mean(0), snis_standard_error(fresh, ft)
        ess = tuple(_ess(sol.tilt.probs, table).tolist())
    fit = MomentFit(method, tuple(m.tolist()), tuple(achieved.tolist()), tuple(se.tolist()), tuple(ranges),
                    kl_to_prior(sol, m), sol.iterations, len(prompts), ess)
    reward = MomentReward(sol.coefficients.tolist(), features, constraint, fit)
    return Target(prior, reward, 1.0, max_new_tokens)


def _ess(probs: torch.Tensor, table: AtomTable) -> torch.Tensor:
    """Kish effective sample size of each group's atom probabilities, Tensor [P]."""
    return 1.0 / group_sum(probs ** 2, table.group, table.num_groups)


def _smc_rounds(draw, m: torch.Tensor, names, tol: float, max_iter: int, rounds: int):
    """Particles of the tilt lambda_k, the dual solved on them: lambda_{k+1}; stop when lambda_{k+1}
    keeps >= 90% of the particles' ESS in every group (or after ``rounds``). Returns (table, ranges, sol)."""
    lam = torch.zeros_like(m)
    for _ in range(rounds):
        table = draw(lam)
        ranges = check_reachable(table, m, names)
        sol = solve_dual(table, m, tol, max_iter)
        base = tilt(table, lam).probs  # the particles' own weights
        kept = float((_ess(sol.tilt.probs, table) / _ess(base, table)).min())
        lam = sol.coefficients
        if kept >= 0.9:
            break
    return table, ranges, sol
