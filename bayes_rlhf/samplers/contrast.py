"""One step's contrast in contrastive twist learning: the two weighted sample sets and the surrogate.

For P prompts, T tokens and a twist f_theta = log psi (``twist_learning.py`` has the derivation)::

    ContrastSet: rows ids [m, T], unfinished [m, T - 1], log_w [m, T - 1], prompt_index [m]
    side(s)     = sum_t sum_rows softmax_rows-of-a-prompt(log_w (+ f, tilted)) 1{unfinished} f_t
    surrogate   = (side(negatives) - side(positives)) / P        # its gradient: the CTL gradient
    loss        = (sum_p log mean_j exp(logits_pj) - side(positives)) / P     (tilted negatives only)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from bayes_rlhf.logweights import group_softmax, log_mean_exp
from bayes_rlhf.models.completions import Completions
from bayes_rlhf.samplers.learned_twist import LearnedTwist
from bayes_rlhf.samplers.weighted import WeightedSamples
from bayes_rlhf.target import Target


@dataclass(frozen=True)
class ContrastSet:
    """Rows entering one side of the contrast, for P prompts and T tokens.

    Attributes
    ----------
    ids : LongTensor [m, T]
    unfinished : BoolTensor [m, T - 1]
        Column t - 1: the row has a t-token prefix without EOS (its state at t is a prefix).
    log_w : Tensor [m, T - 1]
        float64 log-weight of the row's state at t (-inf: not in the set at t).
    prompt_index : LongTensor [m]
    tilt : bool
        Add log psi_t of unfinished rows to ``log_w`` (prior negatives: SNIS of sigma_t).
    """

    ids: torch.Tensor
    unfinished: torch.Tensor
    log_w: torch.Tensor
    prompt_index: torch.Tensor
    tilt: bool = False

    @classmethod
    def positive(cls, samples: WeightedSamples | Completions, T: int) -> "ContrastSet":
        """Weighted posterior samples (``Completions``: equal weights)."""
        if isinstance(samples, WeightedSamples):
            lw = samples.log_weights.double().cpu()
        else:
            lw = torch.zeros(samples.ids.shape[0], dtype=torch.float64)
        return cls(samples.ids.cpu(), samples.mask.cpu()[:, 1:T], lw[:, None].expand(-1, T - 1),
                   samples.prompt_index.cpu())

    @classmethod
    def prior(cls, ids: torch.Tensor, mask: torch.Tensor, rewards: torch.Tensor, prompt_index: torch.Tensor,
              beta: float) -> "ContrastSet":
        """Prior samples, weighted by psi_t (unfinished) or exp(r / beta) (ended) at each t."""
        T = ids.shape[1]
        unf = mask[:, 1:T].cpu()
        ended = (rewards.double().cpu() / beta)[:, None].expand(-1, T - 1)
        return cls(ids.cpu(), unf, torch.where(unf, 0.0, ended), prompt_index.cpu(), tilt=True)


def _side(twist, prompt_ids: list[list[int]], s: ContrastSet, P: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(sum over prompts and t of the weighted mean of 1{unfinished} log psi_t, its weights, pieces)."""
    f = twist.prefix_log_potentials([prompt_ids[i] for i in s.prompt_index.tolist()], s.ids)
    f = f[:, : s.unfinished.shape[1]].double().cpu()
    logits = s.log_w
    if s.tilt:
        logits = torch.where(s.unfinished, logits + f.detach(), logits)
    w = group_softmax(logits, s.prompt_index, P)
    return (w * torch.where(s.unfinished, f, 0.0)).sum(), logits, {"f": f, "w": w}


def ctl_surrogate(twist: LearnedTwist, target: Target, prompts: Sequence[str], positives: ContrastSet,
                  negatives: ContrastSet) -> tuple[torch.Tensor, dict]:
    """The CTL surrogate: its gradient is the CTL gradient estimate (averaged over prompts).

    Parameters
    ----------
    twist : LearnedTwist
    target : Target
    prompts : sequence of P str
        ``prompt_index`` of both sets indexes this list.
    positives, negatives : ContrastSet

    Returns
    -------
    (Tensor scalar, dict)
        surrogate = (E_neg - E_pos of sum_t 1{unfinished} log psi_t) / P, differentiable in the
        twist; info with "gap" (its value) and "loss" (L up to a constant; NaN unless the
        negatives are tilted prior samples).
    """
    P = len(prompts)
    prompt_ids = [target.prior.encode_prompt(p) for p in prompts]
    pos, _, _ = _side(twist, prompt_ids, positives, P)
    neg, logits, _ = _side(twist, prompt_ids, negatives, P)
    surrogate = (neg - pos) / P
    loss = math.nan
    if negatives.tilt:
        log_norm = 0.0
        for p in range(P):
            rows = negatives.prompt_index == p
            log_norm += float(log_mean_exp(logits[rows], 0).sum())
        loss = (log_norm - float(pos.detach())) / P
    return surrogate, {"gap": float(surrogate.detach()), "loss": loss}
