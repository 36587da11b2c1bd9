"""``beta_for_kl`` and ``beta_for_reward``: the beta whose posterior spends a KL or reward budget.

pi*_beta = pi0 exp(r / beta) / Z maximises E_q[r] subject to KL(q || pi0) <= KL(pi*_beta || pi0),
with beta the Lagrange multiplier. In t = 1 / beta, on the table of (log pi0, r)::

    E_t[r]  = sum_x pi_t(x) r(x),          d/dt E_t[r] = Var_t[r] >= 0
    KL(t)   = t E_t[r] - log Z(t),         d/dt KL(t)  = t Var_t[r] >= 0

both averaged over the prompts, so each budget has one beta. Pseudocode::

    table = exact: each prompt enumerated once (no re-enumeration while searching), or the
                   ExactPosterior tables the caller holds (``posteriors=``)
            snis:  N prior draws per prompt, log_base = -log N
    reachable = (limit t -> 0, limit t -> inf): KL in (-log pi0(r > -inf), -log pi0(argmax r)),
                E[r] in (E_pi0[r | r > -inf], max r), each averaged over prompts
    outside -> UnreachableError naming the range
    bracket s = log t by doubling, then Brent (scipy.optimize.brentq) to |f(s)| ~ 1e-12
    snis: SE(t) = SE(statistic at t) / (d statistic / dt), SE(beta) = SE(t) / t^2 (delta method)

The SE of the self-normalised statistics uses each draw's influence: for the KL,
``psi_i = N wbar_i (t (r_i - mu) - 1) + 1`` (1 for a draw of reward -inf), for E[r]
``psi_i = N wbar_i (r_i - mu)``; ``Var = sum_i psi_i^2 / N^2`` per prompt.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from bayes_rlhf._checks import check_generator, check_int, check_real
from bayes_rlhf.control.tables import (AtomTable, Tilt, UnreachableError, check_prompts, exact_reward_table,
                                       held_posteriors, resolve_method, sampled_reward_table, tilt)
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.logweights import group_logsumexp
from bayes_rlhf.target import Target

#: the search for t = 1 / beta runs over log t in [-S_MAX, S_MAX]
S_MAX = 64.0


class BetaChoice(float):
    """A beta chosen for a budget: a plain float, with how it was found.

    Attributes
    ----------
    method : str
        'exact' or 'snis'.
    standard_error : float
        0 for 'exact'; the delta-method SE of beta for 'snis'.
    budget : str
        'kl' or 'mean_reward'.
    value : float
        The budget asked for.
    kl, mean_reward : float
        Prompt-averaged KL(pi*_beta || pi0) and E_pi*[r] at this beta (estimates for 'snis').
    reachable : (float, float)
        The open interval of budgets any beta in (0, inf) reaches.
    num_prompts : int
    """

    def __new__(cls, beta: float, method: str = "exact", standard_error: float = 0.0, budget: str = "kl",
                value: float = math.nan, kl: float = math.nan, mean_reward: float = math.nan,
                reachable: tuple = (math.nan, math.nan), num_prompts: int = 1):
        obj = super().__new__(cls, beta)
        obj.method, obj.standard_error, obj.budget, obj.value = method, float(standard_error), budget, float(value)
        obj.kl, obj.mean_reward, obj.reachable, obj.num_prompts = float(kl), float(mean_reward), reachable, num_prompts
        return obj

    def __reduce__(self):
        return (BetaChoice, (float(self), self.method, self.standard_error, self.budget, self.value, self.kl,
                             self.mean_reward, self.reachable, self.num_prompts))

    def __repr__(self) -> str:
        se = f" +- {self.standard_error:.3g}" if self.method != "exact" else ""
        return f"BetaChoice({float(self):.10g}{se}, {self.budget}={self.value:g}, method={self.method!r})"

    def summary(self) -> dict:
        """Plain values for run summaries and reports."""
        return {"beta": float(self), "method": self.method, "standard_error": self.standard_error,
                "budget": self.budget, "value": self.value, "kl_to_prior": self.kl,
                "mean_reward": self.mean_reward, "reachable": list(self.reachable), "num_prompts": self.num_prompts}


def _statistics(table: AtomTable, t: float) -> tuple[Tilt, torch.Tensor, torch.Tensor]:
    """The tilt by t and the per-prompt E_t[r] [P] and KL(pi_t || pi0) [P]."""
    tl = tilt(table, torch.tensor([t], dtype=torch.float64))
    mean_r = tl.means[:, 0]
    return tl, mean_r, t * mean_r - tl.log_z


def _reachable(table: AtomTable, budget: str) -> tuple[float, float]:
    """The limits of the prompt-averaged statistic as t -> 0 and t -> inf."""
    r, g, P = table.features[:, 0], table.group, table.num_groups
    top = torch.full((P,), -math.inf, dtype=torch.float64).scatter_reduce(0, g, r, reduce="amax")
    if budget == "mean_reward":
        low = tilt(table, torch.zeros(1, dtype=torch.float64)).means[:, 0]
        return float(low.mean()), float(top.mean())
    low = (-group_logsumexp(table.log_base, g, P)).clamp(min=0)   # -log pi0(r > -inf)
    low = torch.where(low < 1e-12, 0.0, low)                      # the prior's own rounding: no constraint
    at_top = torch.where(r == top[g], table.log_base, -math.inf)
    high = -group_logsumexp(at_top, g, P)                          # -log pi0(argmax r)
    return float(low.mean()), float(high.mean())


def _bracket(f) -> tuple[float, float]:
    lo, hi = -1.0, 1.0
    while f(lo) > 0 and lo > -S_MAX:
        lo *= 2
    while f(hi) < 0 and hi < S_MAX:
        hi *= 2
    return lo, hi


def _standard_error(table: AtomTable, tl: Tilt, t: float, budget: str) -> float:
    """Delta-method SE of beta from the self-normalised statistic's influence (module docstring)."""
    r, g, P = table.features[:, 0], table.group, table.num_groups
    centred = r - tl.means[g, 0]
    var_r = torch.zeros(P, dtype=torch.float64).index_add_(0, g, tl.probs * centred ** 2)
    n = torch.tensor(table.num_draws, dtype=torch.float64)
    if budget == "kl":
        psi = n[g] * tl.probs * (t * centred - 1) + 1
        missing = n - torch.zeros(P, dtype=torch.float64).index_add_(0, g, torch.ones_like(r))  # psi = 1 each
        var = (torch.zeros(P, dtype=torch.float64).index_add_(0, g, psi ** 2) + missing) / n ** 2
        slope = float((t * var_r).mean())
    else:
        var = torch.zeros(P, dtype=torch.float64).index_add_(0, g, (tl.probs * centred) ** 2)
        slope = float(var_r.mean())
    se_stat = float(var.sum().sqrt()) / P
    return se_stat / slope / t ** 2 if slope > 0 else math.inf


def _solve(target: Target, prompts, value: float, budget: str, method: str, num_samples: int, generator,
           max_completions: int | None, posteriors=None) -> BetaChoice:
    if not isinstance(target, Target):
        raise ConfigError(f"expected a bayes_rlhf.Target, got {type(target).__name__}; build one with "
                          "Target(prior=lm, reward=reward, beta=1.0, max_new_tokens=T)")
    prompts = check_prompts(target, prompts)
    held = held_posteriors(target, posteriors)
    if held and method == "snis":
        raise ConfigError("posteriors are exact tables and method='snis' estimates from prior draws: drop one")
    if held and method == "auto" and all(p in held for p in prompts):
        method = "exact"  # nothing left to enumerate: the space guard has nothing to guard
    method = resolve_method(method, target.prior, target.max_new_tokens, max_completions)
    if method == "exact":
        table = exact_reward_table(target, prompts, max_completions, posteriors=held)
    else:
        check_generator(generator)
        table = sampled_reward_table(target, prompts, check_int(num_samples, "num_samples", 2), generator=generator)
    low, high = _reachable(table, budget)
    name = "KL(pi* || pi0)" if budget == "kl" else "E_pi*[r]"
    where = "" if method == "exact" else f" (estimated from {num_samples} prior draws per prompt)"
    if not low < value < high:
        what = (f"the reward is constant on the support: {name} = {low:.6g} for every beta" if high - low <= 0 else
                f"beta in (0, inf) reaches {name} in ({low:.6g}, {high:.6g}) averaged over the {len(prompts)} "
                f"prompt(s){where}")
        raise UnreachableError(f"{name} = {value:g} cannot be reached: {what}. Choose a budget inside that range "
                               "(the ends are beta -> inf and beta -> 0).", (low, high))
    index = 2 if budget == "kl" else 1
    f = lambda s: float(_statistics(table, math.exp(s))[index].mean()) - value  # noqa: E731
    lo, hi = _bracket(f)
    if f(lo) > 0 or f(hi) < 0:
        raise UnreachableError(f"{name} = {value:g} is within float64 rounding of the edge of the reachable "
                               f"range ({low:.6g}, {high:.6g}){where}: move it inwards", (low, high))
    from scipy.optimize import brentq

    s = brentq(f, lo, hi, xtol=1e-14, rtol=1e-15, maxiter=500)
    t = math.exp(s)
    tl, mean_r, kl = _statistics(table, t)
    se = 0.0 if method == "exact" else _standard_error(table, tl, t, budget)
    return BetaChoice(1.0 / t, method, se, budget, value, float(kl.mean()), float(mean_r.mean()), (low, high),
                      len(prompts))


def beta_for_kl(target: Target, prompts: str | Sequence[str], kl: float, *, method: str = "auto",
                num_samples: int = 4096, generator: torch.Generator | None = None,
                max_completions: int | None = None, posteriors=None) -> BetaChoice:
    """The beta with KL(pi*_beta || pi0) = ``kl`` (averaged over the prompts).

    Parameters
    ----------
    target : Target
        Its prior, reward and max_new_tokens (its beta is not used).
    prompts : str or sequence of str
    kl : float
        The budget in nats, inside the reachable range (see ``UnreachableError``).
    method : {'auto', 'exact', 'snis'}
        'exact' on the enumerated tables (to ~1e-12 in KL); 'snis' from ``num_samples`` prior
        draws per prompt, with an SE; 'auto' is 'exact' when the space fits (or ``posteriors``
        hold every prompt).
    posteriors : ExactPosterior, sequence or dict prompt -> ExactPosterior, optional
        Tables already enumerated (``exact_posterior(target, prompt)`` at any beta: only log pi0 and
        r are read): those prompts are not enumerated again.

    Returns
    -------
    BetaChoice
        A float (pass it as ``Target(..., beta=...)``) with ``.standard_error``, ``.kl``,
        ``.mean_reward``, ``.reachable``.
    """
    kl = check_real(kl, "kl")
    return _solve(target, prompts, float(kl), "kl", method, num_samples, generator, max_completions, posteriors)


def beta_for_reward(target: Target, prompts: str | Sequence[str], mean_reward: float, *, method: str = "auto",
                    num_samples: int = 4096, generator: torch.Generator | None = None,
                    max_completions: int | None = None, posteriors=None) -> BetaChoice:
    """The beta with E_pi*_beta[r] = ``mean_reward`` (averaged over the prompts); see ``beta_for_kl``."""
    mean_reward = check_real(mean_reward, "mean_reward")
    return _solve(target, prompts, float(mean_reward), "mean_reward", method, num_samples, generator, max_completions,
                  posteriors)
