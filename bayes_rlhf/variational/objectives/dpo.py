"""DPO and IPO from preference pairs, and online DPO on the policy's own samples, labelled by a judge.

With u(x) = log q(x) - log pi0(x) (per sequence) and beta the target's::

    dpo         rows (2i, 2i+1) = (chosen, rejected) of train_policy(preferences=...)
                loss = -mean log sigmoid(beta (u_w - u_l))                 (rewards.bradley_terry.dpo_loss)
    ipo         loss = mean (u_w - u_l - 1 / (2 beta))^2                   (Azar et al. 2023; tau = beta, as TRL)
    online_dpo  every pair (a, b) of one prompt's policy samples, P = the judge's P(a > b) from the rewards
                loss = -mean [P log sigmoid(beta Delta) + (1 - P) log sigmoid(-beta Delta)],  Delta = u_a - u_b
                (the Bradley-Terry judge: the expectation over a label drawn with P = sigmoid(r_a - r_b), the
                same expected gradient as drawing it and less noise; "better": TRL's reward-model judge)

Fixed points (derived in ``variational/preferences.py``, which computes each exactly): DPO on pi0 pairs
with Bradley-Terry labels sigmoid(r_a - r_b) reaches pi* (given enough pairs to cover the space); IPO
reaches pi0 exp(w / beta) / Z with w(a) = E_pi0 P(a > b); online DPO reaches pi* with the Bradley-Terry
judge and drifts towards pi0 restricted to the best completions with the "better" judge.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bayes_rlhf.rewards.bradley_terry import dpo_implied_reward, dpo_loss
from bayes_rlhf.variational.objectives.base import Objective, ObjectiveOutput, PolicyBatch, sequence
from bayes_rlhf.variational.preferences import label_probabilities
from bayes_rlhf.variational.settings import DPOConfig
from bayes_rlhf.variational.sources import Source

PREFERENCES = Source("preferences")


def _pair_log_ratios(batch: PolicyBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log q, log pi0) of the chosen rows (even) and the rejected rows (odd), each [n / 2]."""
    n = batch.logq.shape[0]
    if n % 2 or bool((batch.group[0::2] != batch.group[1::2]).any()):
        raise ValueError("a preference batch holds (chosen, rejected) rows in turn, each pair of one prompt")
    lq, lp = sequence(batch.logq), sequence(batch.prior_logp)
    return lq[0::2], lp[0::2], lq[1::2], lp[1::2]


def _margin_stats(margin: torch.Tensor) -> dict:
    m = margin.detach()
    return {"pair_accuracy": float((m > 0).double().mean()), "margin": float(m.mean())}


def dpo(batch: PolicyBatch, settings: DPOConfig | None) -> ObjectiveOutput:
    """DPO on (chosen, rejected) pairs: the Bradley-Terry loss of the implied reward beta log q / pi0."""
    qc, pc, qr, pr = _pair_log_ratios(batch)
    loss = dpo_loss(qc, pc, qr, pr, batch.beta)
    margin = dpo_implied_reward(qc, pc, batch.beta) - dpo_implied_reward(qr, pr, batch.beta)
    return ObjectiveOutput(loss, _margin_stats(margin))


def ipo(batch: PolicyBatch, settings: DPOConfig | None) -> ObjectiveOutput:
    """IPO on (chosen, rejected) pairs: squared distance of u_w - u_l to 1 / (2 beta)."""
    qc, pc, qr, pr = _pair_log_ratios(batch)
    delta = (qc - pc) - (qr - pr)
    return ObjectiveOutput(((delta - 0.5 / batch.beta) ** 2).mean(), _margin_stats(delta))


def within_group_pairs(group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair (i, j), i < j, of rows of the same group: two LongTensors [m]."""
    i, j = torch.triu_indices(len(group), len(group), 1, device=group.device)
    same = group[i] == group[j]
    return i[same], j[same]


def online_dpo(batch: PolicyBatch, settings: DPOConfig) -> ObjectiveOutput:
    """Online DPO: every pair of one prompt's samples, labelled by ``settings.judge`` from the rewards."""
    i, j = within_group_pairs(batch.group)
    if not len(i):
        raise ValueError("online DPO needs at least two samples of a prompt")
    u = sequence(batch.logq) - sequence(batch.prior_logp)
    h = batch.beta * (u[i] - u[j])
    p = label_probabilities(batch.rewards[i], batch.rewards[j], settings.judge)
    loss = -(p * F.logsigmoid(h) + (1 - p) * F.logsigmoid(-h)).mean()
    return ObjectiveOutput(loss, {"margin": float(h.detach().abs().mean())})


dpo_objective = Objective("dpo", dpo, settings="dpo", source=lambda s: PREFERENCES,
                          fixed_point="pi* on pi0 pairs labelled sigmoid(r_a - r_b), as pairs grow")
ipo_objective = Objective("ipo", ipo, settings="dpo", source=lambda s: PREFERENCES,
                          fixed_point="pi0 exp(w / beta) / Z, w(a) = E_pi0 P(a > b): not pi*")
online_dpo_objective = Objective("online_dpo", online_dpo, settings="dpo",
                                 fixed_point="pi* (judge 'bradley_terry'); pi0 on the argmax of r ('better')")
