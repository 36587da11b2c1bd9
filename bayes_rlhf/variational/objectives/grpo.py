"""GRPO as TRL trains it, for measuring how far its fixed point is from pi* (biased, see ``loss``)::

    A_i = (r_i / beta - mean_group) / (std_group + eps);  per token
    loss = sum_{i,t} [-min(rho A_i, clip(rho) A_i) + k3_t] / (number of tokens in the batch)
"""

from __future__ import annotations

import torch

from bayes_rlhf.logweights import group_sum
from bayes_rlhf.variational.objectives.base import Objective, ObjectiveOutput, PolicyBatch, group_counts
from bayes_rlhf.variational.settings import GRPOConfig

GRPO_EPS = 1e-4  # TRL's epsilon in the group-std denominator


def group_relative_advantages(returns: torch.Tensor, group: torch.Tensor, scale: bool = True,
                              eps: float = GRPO_EPS) -> torch.Tensor:
    """GRPO's advantages: (R_i - mean of its prompt's R) / (std of its prompt's R + eps). [n] -> [n].

    The mean includes R_i itself and the std is the unbiased (n - 1) one, as in TRL. ``scale=False``
    leaves out the division (Dr. GRPO).
    """
    g = int(group.max()) + 1
    count = group_counts(returns, group, g)
    if bool((count < 2).any()):
        raise ValueError("group-relative advantages need at least two samples per prompt")
    dev = returns - (group_sum(returns, group, g) / count)[group]
    if not scale:
        return dev
    std = (group_sum(dev ** 2, group, g) / (count - 1)).sqrt()
    return dev / (std[group] + eps)


def loss(batch: PolicyBatch, settings: GRPOConfig) -> ObjectiveOutput:
    """GRPO as TRL trains it (loss_type "dapo"): group-relative advantages, clipped ratio, k3 in the loss.

    Per token t of row i, with rho = q / q_old (1 on the first inner epoch), d = log pi0 - log q::

        A_i  = (r_i / beta - mean_group(r / beta)) / (std_group(r / beta) + eps)   (no "/ std" when
               settings.scale_rewards is False: Dr. GRPO)
        l_it = -min(rho_it A_i, clip(rho_it, 1 - clip, 1 + clip) A_i) + (e^d - d - 1)
        loss = sum_{i,t} l_it / (number of completion tokens in the batch)

    The token-level mean over the whole batch (every group) is TRL's default "dapo" loss type.

    Scaling of the KL term: the loss is in nats, like every objective here. TRL writes
    A - beta_TRL * k3 with A in reward units; dividing by beta_TRL = beta (the target's) gives
    A / beta - k3, i.e. rewards r / beta and a k3 coefficient of 1. Without the std scaling this
    weighs reward against KL(q || pi0) exactly as J(q) = E[r] - beta KL(q || pi0) does (the per-token
    sum of k3 estimates the sequence KL; the common 1 / #tokens factor does not change the ratio).
    With the std scaling the reward is further divided by the group's std, so the effective KL
    weight becomes beta * std(r) per group.

    This is NOT an unbiased gradient of KL(q || pi*): the std scaling re-weights groups, the k3 term's
    sample gradient (1 - pi0/q) grad log q is not that of KL(q || pi0) (in expectation it is, at each
    prefix q visits, the gradient of KL(pi0 || q) over the next token, with no term for how q moves
    the prefixes), and the token mean weighs rows by their share of the batch's tokens.
    Its fixed point differs from pi*; it is here to measure by how much.

    Parameters
    ----------
    batch : PolicyBatch
        logq, old_logq, prior_logp, mask [n, T]; rewards, group [n].
    settings : GRPOConfig
        Uses ``clip`` and ``scale_rewards``.

    Returns
    -------
    ObjectiveOutput
        Scalar loss; stats ``advantage_std``, ``k3_kl`` (mean per-row sum of k3) and ``clip_fraction``.
    """
    mask = batch.mask
    m = mask.to(batch.logq.dtype)
    adv = group_relative_advantages(batch.rewards / batch.beta, batch.group, scale=settings.scale_rewards).detach()
    ratio = torch.exp((batch.logq - batch.old_logq).masked_fill(~mask, 0.0))
    clipped = ratio.clamp(1 - settings.clip, 1 + settings.clip)
    a = adv.unsqueeze(-1)
    pg = -torch.minimum(ratio * a, clipped * a)
    d = (batch.prior_logp - batch.logq).masked_fill(~mask, 0.0)
    k3 = torch.exp(d) - d - 1
    tokens = m.sum().clamp(min=1.0)
    out = ((pg + k3) * m).sum() / tokens
    stats = {"advantage_std": float(adv.std()) if adv.numel() > 1 else 0.0,
             "k3_kl": float((k3 * m).sum(-1).mean().detach()),
             "clip_fraction": float(((ratio - clipped).abs() > 0)[mask].double().mean()) if bool(mask.any()) else 0.0}
    return ObjectiveOutput(out, stats)


grpo_loss = Objective("grpo", loss, settings="grpo", inner_epochs=lambda s: s.epochs,
                      fixed_point="not pi*: std scaling, the k3 term and the token mean bias it (see loss)")
