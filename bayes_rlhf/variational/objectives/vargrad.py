"""Trajectory balance with a learned log Z per prompt, or VarGrad (log Z = the batch mean).

With f(x) = log q(x) - log pi0(x) - r(x) / beta::

    learned:  loss = mean_i (f_i + log Z_theta)^2 / 2   (on policy samples its gradient in theta
              is grad KL(q || pi*))
    batch:    the per-prompt variance of f, sum_i (f_i - mean)^2 / (2 (k - 1)) per prompt
"""

from __future__ import annotations

from bayes_rlhf.logweights import group_sum
from bayes_rlhf.variational.objectives.base import Objective, ObjectiveOutput, PolicyBatch, group_counts, sequence
from bayes_rlhf.variational.settings import VarGradConfig


def loss(batch: PolicyBatch, settings: VarGradConfig) -> ObjectiveOutput:
    """Trajectory balance with a learned log Z per prompt, or VarGrad (log Z = batch mean)."""
    f = sequence(batch.logq) - sequence(batch.prior_logp) - batch.rewards / batch.beta
    if settings.log_z == "learned":
        if batch.log_z is None:
            raise ValueError("vargrad_loss with log_z='learned' needs batch.log_z")
        out = 0.5 * ((f + batch.log_z) ** 2).mean()
        return ObjectiveOutput(out, {"log_z": float(batch.log_z.detach().mean())})
    g = batch.num_groups
    count = group_counts(f, batch.group, g)
    mean = group_sum(f, batch.group, g) / count
    # sum_i (f_i - mean)^2 / (2 (k - 1)) per prompt: its gradient is the leave-one-out REINFORCE one
    var = group_sum((f - mean[batch.group]) ** 2, batch.group, g) / (2 * (count - 1))
    return ObjectiveOutput(var.sum() / g, {"log_z": float(-mean.detach().mean())})


vargrad_loss = Objective("vargrad", loss, settings="vargrad",
                         log_z_lr=lambda s: s.log_z_lr if s.log_z == "learned" else None)
