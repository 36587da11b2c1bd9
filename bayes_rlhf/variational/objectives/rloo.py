"""RLOO: REINFORCE with a leave-one-out baseline, i.e. KL-regularised RL (reverse KL(q || pi*)).

With f(x) = log q(x) - log pi0(x) - r(x) / beta::

    R_i = -f_i (k1 in reward);  A_i = R_i - mean_{j != i, same prompt} R_j
    loss = -mean_i A_i log q(x_i)                      grad -> grad KL(q || pi*)
    ("k3_loss": R_i = r_i / beta and loss += mean k3(q, pi0): GRPO style, biased)
"""

from __future__ import annotations

import torch

from bayes_rlhf.logweights import group_sum
from bayes_rlhf.variational.objectives.base import (Objective, ObjectiveOutput, PolicyBatch, group_counts, k3_kl,
                                                    sequence)
from bayes_rlhf.variational.settings import RLOOConfig


def leave_one_out_advantages(returns: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """A_i = R_i - mean of the other returns of the same prompt. returns [n] -> [n]."""
    g = int(group.max()) + 1
    count = group_counts(returns, group, g)
    if bool((count < 2).any()):
        raise ValueError("leave-one-out baselines need at least two samples per prompt")
    total = group_sum(returns, group, g)
    return returns - (total[group] - returns) / (count[group] - 1)


def loss(batch: PolicyBatch, settings: RLOOConfig) -> ObjectiveOutput:
    """REINFORCE with a leave-one-out baseline: reverse KL(q || pi*), i.e. KL-regularised RL."""
    lq = sequence(batch.logq)
    log_ratio = sequence(batch.old_logq) - sequence(batch.prior_logp)
    k3 = settings.kl_estimator == "k3_loss"
    ret = batch.rewards / batch.beta - (0.0 if k3 else log_ratio)
    adv = leave_one_out_advantages(ret, batch.group)
    out = -(adv.detach() * lq).mean()
    stats = {"advantage_std": float(adv.std()) if adv.numel() > 1 else 0.0}
    if k3:  # biased: the k3 term's sample gradient is not that of KL(q || pi0)
        kl = k3_kl(batch.logq, batch.prior_logp, batch.mask).mean()
        out = out + kl
        stats["k3_kl"] = float(kl.detach())
    return ObjectiveOutput(out, stats)


rloo_loss = Objective("rloo", loss, settings="rloo",
                      fixed_point="pi* (with kl_estimator='k3_loss': biased, not pi*)")
