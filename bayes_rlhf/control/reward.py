"""The reward of a moment-constrained target, and the record of how its coefficients were found.

The I-projection of pi0 onto ``{q : E_q[phi] = m}`` is ``pi0 exp(lambda . phi) / Z``: a ``Target``
with ``beta = 1`` and the reward ``lambda . phi`` (plus a pointwise constraint, 0 or -inf)::

    r(c, x) = sum_i lambda_i phi_i(c, x)  [+ constraint(c, x)]

``MomentReward`` is a ``WeightedSum`` (each feature is called through ``evaluate_reward``), so
every exact, sampler and training path reads it like any other reward.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch

from bayes_rlhf.rewards.base import evaluate_reward, reward_name
from bayes_rlhf.rewards.combinators import WeightedSum


@dataclass(frozen=True)
class MomentFit:
    """How the coefficients of a ``MomentReward`` were found, and what they achieve.

    Attributes
    ----------
    method : str
        'exact' (enumerated tables) or 'snis' (self-normalised importance sampling).
    moments : tuple of float [d]
        The target moments m.
    achieved : tuple of float [d]
        E[phi] under the target, averaged over the prompts: exact, or (snis) a self-normalised
        estimate from a held-out batch of proposals.
    standard_error : tuple of float [d]
        0 for 'exact'; for 'snis' the delta-method SE of ``achieved`` (to first order also the SE
        of the target's true moments about m). It is reliable when the ESS is a sizeable fraction of
        the draws; with heavy-tailed weights (ESS of a few percent) it underestimates.
    reachable : tuple of (float, float) [d]
        Per feature, the open interval of moments the support can reach (prompt-averaged min, max).
    kl_to_prior : float
        KL(pi* || pi0) averaged over the prompts, lambda . m - mean log Z (nats; estimated for 'snis').
    iterations : int
        Newton iterations of the dual.
    num_prompts : int
    ess : tuple of float
        Kish ESS of the fitted weights per prompt ('snis'; empty for 'exact').
    """

    method: str
    moments: tuple
    achieved: tuple
    standard_error: tuple
    reachable: tuple
    kl_to_prior: float
    iterations: int
    num_prompts: int
    ess: tuple = ()

    @property
    def moment_error(self) -> tuple:
        """achieved - target, per feature."""
        return tuple(a - m for a, m in zip(self.achieved, self.moments))

    def as_dict(self) -> dict:
        out = asdict(self)
        out["moment_error"] = list(self.moment_error)
        return out


class MomentReward(WeightedSum):
    """``lambda . phi`` (+ an optional pointwise constraint): the reward of an I-projection target.

    Parameters
    ----------
    coefficients : sequence of float [d]
        lambda, one per feature.
    features : sequence of reward [d]
        phi_i: rewards ``f(prompts, completions)`` or ``TokenReward`` objects (finite values).
    constraint : reward, optional
        A pointwise ``Constraint`` (0 where it holds, -inf where not), added with weight 1.
    fit : MomentFit, optional
        How the coefficients were found (set by ``moment_target``).
    """

    def __init__(self, coefficients: Sequence[float], features: Sequence, constraint=None,
                 fit: MomentFit | None = None, name: str | None = None):
        coefficients = tuple(float(c) for c in coefficients)
        features = tuple(features)
        terms = list(zip(coefficients, features)) + ([] if constraint is None else [(1.0, constraint)])
        label = " + ".join(f"{c:.4g}*{reward_name(f)}" for c, f in zip(coefficients, features))
        super().__init__(terms, name=name or f"moments[{label}]")
        self.coefficients, self.features, self.constraint, self.fit = coefficients, features, constraint, fit

    @property
    def feature_names(self) -> list[str]:
        return [reward_name(f) for f in self.features]

    def feature_values(self, lm, prompts: Sequence[str], ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """phi of each completion, float64 Tensor [n, d] (one checked ``evaluate_reward`` per feature)."""
        return feature_matrix(self.features, lm, prompts, ids, mask)

    def summary(self) -> dict:
        """Plain values for run summaries and reports: features, lambda, target and achieved moments."""
        out = {"features": self.feature_names, "coefficients": list(self.coefficients),
               "constraint": None if self.constraint is None else reward_name(self.constraint)}
        if self.fit is not None:
            out.update(self.fit.as_dict())
        return out

    def __repr__(self) -> str:
        return f"MomentReward({self.name})"


def feature_matrix(features: Sequence, lm, prompts: Sequence[str], ids: torch.Tensor,
                   mask: torch.Tensor) -> torch.Tensor:
    """Features of completions, float64 Tensor [n, d]; a non-finite value is a ``RewardError``.

    ``prompts`` has one prompt per row, as ``evaluate_reward`` takes.
    """
    from bayes_rlhf.errors import RewardError

    cols = []
    for f in features:
        v = evaluate_reward(f, lm, prompts, ids, mask)
        if not bool(torch.isfinite(v).all()):
            i = int((~torch.isfinite(v)).nonzero()[0])
            raise RewardError(f"feature {reward_name(f)!r} returned {float(v[i])} for completion {i} "
                              f"({lm.decode(ids[i:i + 1], mask[i:i + 1])[0]!r}); features must be finite "
                              "(pass hard constraints as constraint=Constraint(...))")
        cols.append(v)
    return torch.stack(cols, dim=1) if cols else torch.zeros((ids.shape[0], 0), dtype=torch.float64)

