"""Targets built from a budget or from constraints.

``moment_target``: the I-projection pi0 exp(lambda . phi) / Z whose features have given means
(distributional control, GDC); ``beta_for_kl`` / ``beta_for_reward``: the beta whose posterior
spends a KL or reward budget. Both solve on enumerated tables when the space fits and on
importance samples otherwise.
"""

from bayes_rlhf.control.budget import BetaChoice, beta_for_kl, beta_for_reward
from bayes_rlhf.control.moments import moment_target
from bayes_rlhf.control.reward import MomentFit, MomentReward
from bayes_rlhf.control.tables import UnreachableError

__all__ = ["moment_target", "MomentReward", "MomentFit", "beta_for_kl", "beta_for_reward", "BetaChoice",
           "UnreachableError", "control_summary"]


def control_summary(target) -> dict | None:
    """What a run summary records of a controlled target: lambda and moments, or the beta's budget."""
    if isinstance(target.reward, MomentReward):
        return {"kind": "moments", **target.reward.summary()}
    if isinstance(target.beta, BetaChoice):
        return {"kind": "budget", **target.beta.summary()}
    return None
