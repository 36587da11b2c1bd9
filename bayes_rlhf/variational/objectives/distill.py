"""Distillation: forward KL(pi* || q) from (weighted) samples of pi* (exact, rejection, a given sampler).

    loss = -sum_i w_i log q(x_i) / P,   w self-normalised per prompt (uniform for unweighted draws)
"""

from __future__ import annotations

import torch

from bayes_rlhf.errors import ConfigError
from bayes_rlhf.variational.objectives.base import Objective, ObjectiveOutput, PolicyBatch, weighted_nll
from bayes_rlhf.variational.settings import DistillConfig
from bayes_rlhf.variational.sources import Source


def loss(batch: PolicyBatch, settings: DistillConfig | None) -> ObjectiveOutput:
    """Forward KL(pi* || q) from (weighted) samples of pi*: weighted maximum likelihood."""
    log_w = batch.log_weights if batch.log_weights is not None else torch.zeros_like(batch.rewards)
    return weighted_nll(batch, log_w)


def _check(settings: DistillConfig) -> None:
    if settings.source == "rejection" and settings.reward_max is None:
        raise ConfigError("TrainerConfig.reward_max must be set (an upper bound of the reward) when "
                          "distill_source='rejection'")


distill_loss = Objective("distill", loss, settings="distill",
                         source=lambda s: Source(s.source, reward_max=s.reward_max), check=_check)
