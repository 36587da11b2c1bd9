"""PPO: clipped importance ratio, GAE advantages from a value head, KL to pi0 in the reward.

    per-token rewards -(log q_old - log pi0)_t, + r / beta at the last token; GAE(1, lambda)
    advantages from a value head; loss = -mean min(rho A, clip(rho) A) + c_v (V - G)^2 / 2
"""

from __future__ import annotations

import torch

from bayes_rlhf.variational.objectives.base import Objective, ObjectiveOutput, PolicyBatch, k3_kl
from bayes_rlhf.variational.settings import PPOConfig


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


def _token_rewards(batch: PolicyBatch, k3: bool) -> torch.Tensor:
    """-(log q_old - log pi0) per token (0 with k3 in the loss), plus r / beta at each row's last token."""
    mask = batch.mask
    m = mask.to(batch.logq.dtype)
    tok_r = torch.zeros_like(batch.old_logq) if k3 else -(batch.old_logq - batch.prior_logp) * m
    last = (mask.sum(-1) - 1).clamp(min=0)
    tok_r = tok_r.clone()
    tok_r[torch.arange(mask.shape[0]), last] += batch.rewards / batch.beta
    return tok_r


def loss(batch: PolicyBatch, settings: PPOConfig) -> ObjectiveOutput:
    """PPO: clipped importance ratio, GAE advantages from a value head, KL to pi0 in the reward."""
    if batch.values is None or batch.old_values is None:
        raise ValueError("ppo_loss needs values and old_values (a value head)")
    mask = batch.mask
    m = mask.to(batch.logq.dtype)
    k3 = settings.kl_estimator == "k3_loss"
    old_v = batch.old_values.detach() * m
    adv = gae(_token_rewards(batch, k3), old_v, mask, settings.gae_lambda)
    returns = adv + old_v
    if settings.whiten_advantages:
        sel = adv[mask]
        adv = (adv - sel.mean()) / (sel.std() + 1e-8) * m
    ratio = torch.exp((batch.logq - batch.old_logq).masked_fill(~mask, 0.0))
    clipped = ratio.clamp(1 - settings.clip, 1 + settings.clip)
    pg = -(torch.minimum(ratio * adv, clipped * adv) * m).sum(-1).mean()
    vloss = 0.5 * (((batch.values - returns) ** 2) * m).sum(-1).mean()
    out = pg + settings.value_coef * vloss
    clip_fraction = float(((ratio - clipped).abs() > 0)[mask].double().mean())
    stats = {"value_loss": float(vloss.detach()), "clip_fraction": clip_fraction}
    if k3:
        kl = k3_kl(batch.logq, batch.prior_logp, mask).mean()
        out = out + kl
        stats["k3_kl"] = float(kl.detach())
    return ObjectiveOutput(out, stats)


ppo_loss = Objective("ppo", loss, settings="ppo", inner_epochs=lambda s: s.epochs,
                     value_head_lr=lambda s: s.value_lr, default_lr=3e-4,
                     fixed_point="pi* with gae_lambda = 1 (lambda < 1 biases the advantages)")
