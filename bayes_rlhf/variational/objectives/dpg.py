"""DPG, the distributional policy gradient: forward KL(pi* || q) with self-normalised importance weights.

    w_i ∝ pi0(x_i) e^{r_i / beta} / s(x_i), self-normalised per prompt, with s = q_old (policy
    samples) or pi0 (prior samples);  loss = -sum_i w_i log q(x_i) / P
"""

from __future__ import annotations

from bayes_rlhf.variational.objectives.base import Objective, ObjectiveOutput, PolicyBatch, sequence, weighted_nll
from bayes_rlhf.variational.settings import DPGConfig
from bayes_rlhf.variational.sources import POLICY, PRIOR


def loss(batch: PolicyBatch, settings: DPGConfig | None) -> ObjectiveOutput:
    """Distributional policy gradient: forward KL(pi* || q) with self-normalised importance weights."""
    if batch.proposal_log_probs is None:
        raise ValueError("dpg_loss needs proposal_log_probs (log s(x) of the sampling distribution)")
    log_target = sequence(batch.prior_logp) + batch.rewards / batch.beta
    return weighted_nll(batch, log_target - batch.proposal_log_probs)


dpg_loss = Objective("dpg", loss, settings="dpg", source=lambda s: POLICY if s.proposal == "policy" else PRIOR)
