"""Losses that fit a policy q to pi* = pi0 exp(r / beta) / Z, as pure functions over a batch.

Every objective has the signature ``loss_fn(batch: PolicyBatch, config) -> ObjectiveOutput`` and is
measured in nats (rewards enter as r / beta), so its gradient estimates the gradient of a
divergence to pi*, whatever the reward's scale. With f(x) = log q(x) - log pi0(x) - r(x) / beta
= log q(x) - log pi*(x) - log Z::

    rloo     reverse KL:  R_i = -f_i (k1 in reward);  A_i = R_i - mean_{j != i, same prompt} R_j
             loss = -mean_i A_i log q(x_i)                      grad -> grad KL(q || pi*)
             ("k3_loss": R_i = r_i / beta and loss += mean k3(q, pi0): GRPO style, biased)
    ppo      per-token rewards -(log q_old - log pi0)_t, + r / beta at the last token; GAE(1, lambda)
             advantages from a value head; loss = -mean min(rho A, clip(rho) A) + c_v (V - G)^2 / 2
    dpg      forward KL:  w_i ∝ pi0(x_i) e^{r_i / beta} / s(x_i), self-normalised per prompt, with
             s = q_old (policy samples) or pi0 (prior samples);  loss = -sum_i w_i log q(x_i) / P
    distill  forward KL from samples of pi* (exact, rejection, SMC): loss = -sum_i w_i log q(x_i) / P
    vargrad  trajectory balance:  loss = mean_i (f_i + log Z_theta)^2 / 2 with a learned log Z per
             prompt (on policy samples its gradient in theta is grad KL(q || pi*)); or VarGrad:
             the per-prompt variance of f (log Z = batch mean)
    grpo     TRL's GRPO, for measuring how far its fixed point is from pi* (biased, see grpo_loss):
             A_i = (r_i / beta - mean_group) / (std_group + eps);  per token
             loss = sum_{i,t} [-min(rho A_i, clip(rho) A_i) + k3_t] / (number of tokens in the batch)

P is the number of prompts in the batch. ``OBJECTIVES`` maps config names to functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bayes_rlhf.logweights import group_softmax


@dataclass
class PolicyBatch:
    """One step's samples and everything the losses need (n rows, T tokens; float64 unless noted).

    Attributes
    ----------
    logq : Tensor [n, T]
        Per-token log-probs under the current policy, differentiable (0 at padding).
    old_logq : Tensor [n, T]
        The same under the policy that sampled the batch (detached).
    prior_logp : Tensor [n, T]
        Per-token log-probs under pi0.
    mask : BoolTensor [n, T]
    rewards : Tensor [n]
    group : LongTensor [n]
        Prompt of each row, numbered 0..P-1 within the batch.
    beta : float
    proposal_log_probs : Tensor [n], optional
        log s(x) of the distribution the rows were drawn from (DPG).
    log_weights : Tensor [n], optional
        Given log-weights of the rows (distillation from weighted samples); None = uniform.
    values, old_values : Tensor [n, T], optional
        Value-head predictions V(s_t) before each token (differentiable / detached), PPO.
    log_z : Tensor [n], optional
        The learned log Z of each row's prompt (differentiable), trajectory balance.
    """

    logq: torch.Tensor
    old_logq: torch.Tensor
    prior_logp: torch.Tensor
    mask: torch.Tensor
    rewards: torch.Tensor
    group: torch.Tensor
    beta: float
    proposal_log_probs: torch.Tensor | None = None
    log_weights: torch.Tensor | None = None
    values: torch.Tensor | None = None
    old_values: torch.Tensor | None = None
    log_z: torch.Tensor | None = None

    @property
    def num_groups(self) -> int:
        return int(self.group.max()) + 1


@dataclass
class ObjectiveOutput:
    """A scalar loss to minimise and plain-float statistics for the history."""

    loss: torch.Tensor
    stats: dict = field(default_factory=dict)


def _group_sum(x: torch.Tensor, group: torch.Tensor, num_groups: int) -> torch.Tensor:
    return torch.zeros(num_groups, dtype=x.dtype, device=x.device).index_add_(0, group, x)


def leave_one_out_advantages(returns: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """A_i = R_i - mean of the other returns of the same prompt. returns [n] -> [n]."""
    g = int(group.max()) + 1
    count = _group_sum(torch.ones_like(returns), group, g)
    if bool((count < 2).any()):
        raise ValueError("leave-one-out baselines need at least two samples per prompt")
    total = _group_sum(returns, group, g)
    return returns - (total[group] - returns) / (count[group] - 1)


def k3_kl(logq: torch.Tensor, prior_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence k3 estimate of KL(q || pi0): sum_t (e^d - d - 1), d = log pi0 - log q. [n]."""
    d = (prior_logp - logq).masked_fill(~mask, 0.0)
    return (torch.exp(d) - d - 1).sum(-1)


def _seq(x: torch.Tensor) -> torch.Tensor:
    return x.sum(-1)


def rloo_loss(batch: PolicyBatch, config) -> ObjectiveOutput:
    """REINFORCE with a leave-one-out baseline: reverse KL(q || pi*), i.e. KL-regularised RL."""
    lq = _seq(batch.logq)
    log_ratio = _seq(batch.old_logq) - _seq(batch.prior_logp)
    k3 = getattr(config, "kl_estimator", "k1_reward") == "k3_loss"
    ret = batch.rewards / batch.beta - (0.0 if k3 else log_ratio)
    adv = leave_one_out_advantages(ret, batch.group)
    loss = -(adv.detach() * lq).mean()
    stats = {"advantage_std": float(adv.std()) if adv.numel() > 1 else 0.0}
    if k3:  # biased: the k3 term's sample gradient is not that of KL(q || pi0)
        kl = k3_kl(batch.logq, batch.prior_logp, batch.mask).mean()
        loss = loss + kl
        stats["k3_kl"] = float(kl.detach())
    return ObjectiveOutput(loss, stats)


def gae(token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, lam: float) -> torch.Tensor:
    """GAE advantages with gamma = 1 over [n, T]; the value after the last token is 0."""
    n, T = token_rewards.shape
    m = mask.to(values.dtype)
    adv = torch.zeros_like(token_rewards)
    running = torch.zeros(n, dtype=values.dtype, device=values.device)
    for t in range(T - 1, -1, -1):
        next_v = values[:, t + 1] * m[:, t + 1] if t + 1 < T else torch.zeros_like(running)
        delta = token_rewards[:, t] + next_v - values[:, t]
        running = (delta + lam * running * (m[:, t + 1] if t + 1 < T else 0.0)) * m[:, t]
        adv[:, t] = running
    return adv


def ppo_loss(batch: PolicyBatch, config) -> ObjectiveOutput:
    """PPO: clipped importance ratio, GAE advantages from a value head, KL to pi0 in the reward."""
    if batch.values is None or batch.old_values is None:
        raise ValueError("ppo_loss needs values and old_values (a value head)")
    mask = batch.mask
    m = mask.to(batch.logq.dtype)
    k3 = getattr(config, "kl_estimator", "k1_reward") == "k3_loss"
    tok_r = torch.zeros_like(batch.old_logq) if k3 else -(batch.old_logq - batch.prior_logp) * m
    last = (mask.sum(-1) - 1).clamp(min=0)
    tok_r = tok_r.clone()
    tok_r[torch.arange(mask.shape[0]), last] += batch.rewards / batch.beta
    old_v = batch.old_values.detach() * m
    adv = gae(tok_r, old_v, mask, config.gae_lambda)
    returns = adv + old_v
    if config.whiten_advantages:
        sel = adv[mask]
        adv = (adv - sel.mean()) / (sel.std() + 1e-8) * m
    ratio = torch.exp((batch.logq - batch.old_logq).masked_fill(~mask, 0.0))
    clipped = ratio.clamp(1 - config.ppo_clip, 1 + config.ppo_clip)
    pg = -(torch.minimum(ratio * adv, clipped * adv) * m).sum(-1).mean()
    vloss = 0.5 * (((batch.values - returns) ** 2) * m).sum(-1).mean()
    loss = pg + config.value_coef * vloss
    clip_fraction = float(((ratio - clipped).abs() > 0)[mask].double().mean())
    stats = {"value_loss": float(vloss.detach()), "clip_fraction": clip_fraction}
    if k3:
        kl = k3_kl(batch.logq, batch.prior_logp, mask).mean()
        loss = loss + kl
        stats["k3_kl"] = float(kl.detach())
    return ObjectiveOutput(loss, stats)


def _weighted_nll(batch: PolicyBatch, log_w: torch.Tensor) -> ObjectiveOutput:
    w = group_softmax(log_w.detach(), batch.group)
    loss = -(w * _seq(batch.logq)).sum() / batch.num_groups
    sq = _group_sum(w ** 2, batch.group, batch.num_groups)
    ess = torch.where(sq > 0, 1.0 / sq, 0.0)  # Kish ESS per prompt; 0 for a prompt with no mass
    return ObjectiveOutput(loss, {"ess": float(ess.mean())})


def dpg_loss(batch: PolicyBatch, config) -> ObjectiveOutput:
    """Distributional policy gradient: forward KL(pi* || q) with self-normalised importance weights."""
    if batch.proposal_log_probs is None:
        raise ValueError("dpg_loss needs proposal_log_probs (log s(x) of the sampling distribution)")
    log_target = _seq(batch.prior_logp) + batch.rewards / batch.beta
    return _weighted_nll(batch, log_target - batch.proposal_log_probs)


def distill_loss(batch: PolicyBatch, config) -> ObjectiveOutput:
    """Forward KL(pi* || q) from (weighted) samples of pi*: weighted maximum likelihood."""
    log_w = batch.log_weights if batch.log_weights is not None else torch.zeros_like(batch.rewards)
    return _weighted_nll(batch, log_w)


def vargrad_loss(batch: PolicyBatch, config) -> ObjectiveOutput:
    """Trajectory balance with a learned log Z per prompt, or VarGrad (log Z = batch mean)."""
    f = _seq(batch.logq) - _seq(batch.prior_logp) - batch.rewards / batch.beta
    if getattr(config, "log_z", "learned") == "learned":
        if batch.log_z is None:
            raise ValueError("vargrad_loss with log_z='learned' needs batch.log_z")
        loss = 0.5 * ((f + batch.log_z) ** 2).mean()
        return ObjectiveOutput(loss, {"log_z": float(batch.log_z.detach().mean())})
    g = batch.num_groups
    count = _group_sum(torch.ones_like(f), batch.group, g)
    mean = _group_sum(f, batch.group, g) / count
    # sum_i (f_i - mean)^2 / (2 (k - 1)) per prompt: its gradient is the leave-one-out REINFORCE one
    var = _group_sum((f - mean[batch.group]) ** 2, batch.group, g) / (2 * (count - 1))
    return ObjectiveOutput(var.sum() / g, {"log_z": float(-mean.detach().mean())})


GRPO_EPS = 1e-4  # TRL's epsilon in the group-std denominator


def group_relative_advantages(returns: torch.Tensor, group: torch.Tensor, scale: bool = True,
                              eps: float = GRPO_EPS) -> torch.Tensor:
    """GRPO's advantages: (R_i - mean of its prompt's R) / (std of its prompt's R + eps). [n] -> [n].

    The mean includes R_i itself and the std is the unbiased (n - 1) one, as in TRL. ``scale=False``
    leaves out the division (Dr. GRPO).
    """
    g = int(group.max()) + 1
    count = _group_sum(torch.ones_like(returns), group, g)
    if bool((count < 2).any()):
        raise ValueError("group-relative advantages need at least two samples per prompt")
    dev = returns - (_group_sum(returns, group, g) / count)[group]
    if not scale:
        return dev
    std = (_group_sum(dev ** 2, group, g) / (count - 1)).sqrt()
    return dev / (std[group] + eps)


def grpo_loss(batch: PolicyBatch, config) -> ObjectiveOutput:
    """GRPO as TRL trains it (loss_type "dapo"): group-relative advantages, clipped ratio, k3 in the loss.

    Per token t of row i, with rho = q / q_old (1 on the first inner epoch), d = log pi0 - log q::

        A_i  = (r_i / beta - mean_group(r / beta)) / (std_group(r / beta) + eps)   (no "/ std" when
               config.grpo_scale_rewards is False: Dr. GRPO)
        l_it = -min(rho_it A_i, clip(rho_it, 1 - ppo_clip, 1 + ppo_clip) A_i) + (e^d - d - 1)
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
    config : TrainerConfig
        Uses ``ppo_clip`` and ``grpo_scale_rewards``.

    Returns
    -------
    ObjectiveOutput
        Scalar loss; stats ``advantage_std``, ``k3_kl`` (mean per-row sum of k3) and ``clip_fraction``.
    """
    mask = batch.mask
    m = mask.to(batch.logq.dtype)
    adv = group_relative_advantages(batch.rewards / batch.beta, batch.group,
                                    scale=getattr(config, "grpo_scale_rewards", True)).detach()
    ratio = torch.exp((batch.logq - batch.old_logq).masked_fill(~mask, 0.0))
    clip = getattr(config, "ppo_clip", 0.2)
    clipped = ratio.clamp(1 - clip, 1 + clip)
    a = adv.unsqueeze(-1)
    pg = -torch.minimum(ratio * a, clipped * a)
    d = (batch.prior_logp - batch.logq).masked_fill(~mask, 0.0)
    k3 = torch.exp(d) - d - 1
    tokens = m.sum().clamp(min=1.0)
    loss = ((pg + k3) * m).sum() / tokens
    stats = {"advantage_std": float(adv.std()) if adv.numel() > 1 else 0.0,
             "k3_kl": float((k3 * m).sum(-1).mean().detach()),
             "clip_fraction": float(((ratio - clipped).abs() > 0)[mask].double().mean()) if bool(mask.any()) else 0.0}
    return ObjectiveOutput(loss, stats)


OBJECTIVES = {"rloo": rloo_loss, "ppo": ppo_loss, "dpg": dpg_loss, "distill": distill_loss,
              "vargrad": vargrad_loss, "grpo": grpo_loss}

__all__ = ["PolicyBatch", "ObjectiveOutput", "OBJECTIVES", "rloo_loss", "ppo_loss", "dpg_loss",
           "distill_loss", "vargrad_loss", "grpo_loss", "leave_one_out_advantages", "group_relative_advantages",
           "group_softmax", "gae", "k3_kl", "GRPO_EPS"]
