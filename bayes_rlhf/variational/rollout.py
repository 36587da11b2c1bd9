"""The ``Rollout``: one step's samples with everything scored on them, made by ``make_rollout`` and read
both by the loss (``policy_batch``) and by the history row (``estimates``)::

    drawn     = draw(prompts of the step, generator)           # sources.make_draw
    log pi0   = prior.score(x) (or the draw's own, from a policy on the truncated prior's support)
    r         = target.rewards(x)
    log q, V  = score(x)    # the differentiable forward (training), or policy.score (estimates only)
    rollout   = Rollout(ids, mask, group, prompt index, log pi0, log q, r, V, log-weights)   # frozen

``forward`` is the one differentiable pass: per-token log q through ``CausalLM.sequence_forward``
and the value head on its last hidden state.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from bayes_rlhf.models.causal_lm import CausalLM
from bayes_rlhf.variational.objectives import PolicyBatch
from bayes_rlhf.variational.sources import Drawn


@dataclass(frozen=True)
class Rollout:
    """One step's samples (n rows, T tokens; float64 log-probs), immutable.

    Attributes
    ----------
    ids, mask : Tensor [n, T]
    group : LongTensor [n]
        Prompt of each row within the step, 0..P-1.
    prompt_index : LongTensor [n]
        Prompt of each row in the run's prompt list.
    rows : tuple of str [n]
        The prompt text of each row.
    prior_logp : Tensor [n, T]
        Per-token log pi0.
    policy_logp : Tensor [n, T]
        Per-token log q under the policy when the rollout was made (detached).
    rewards : Tensor [n]
    values : Tensor [n, T] or None
        Value-head predictions at that time (detached), when the objective has a value head.
    log_weights : Tensor [n] or None
        Log-weights of weighted draws (a given sampler); None: every row weighs the same.
    source : str
        The ``Source.kind`` the rows came from.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    group: torch.Tensor
    prompt_index: torch.Tensor
    rows: tuple
    prior_logp: torch.Tensor
    policy_logp: torch.Tensor
    rewards: torch.Tensor
    values: torch.Tensor | None
    log_weights: torch.Tensor | None
    source: str

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def proposal_log_probs(self) -> torch.Tensor | None:
        """log s(x) [n] of the distribution the rows were drawn from (policy or prior); None for pi* draws."""
        per_token = {"policy": self.policy_logp, "prior": self.prior_logp}.get(self.source)
        return None if per_token is None else per_token.sum(-1)


Score = Callable[[list, torch.Tensor, torch.Tensor], tuple]


def make_rollout(target, prompts: Sequence[str], idx: list[int], draw, generator: torch.Generator, source: str,
                 score: Score) -> tuple[Rollout, torch.Tensor, torch.Tensor | None]:
    """Draw the step's samples of prompts ``idx`` and score them; also return ``score``'s own output.

    ``score(rows, ids, mask) -> (log q [n, T], values [n, T] or None)``: the training forward (its
    differentiable output serves the first gradient step) or a no-grad ``policy.score``.
    """
    drawn: Drawn = draw([prompts[i] for i in idx], generator)
    rows = tuple(prompts[idx[g]] for g in drawn.group.tolist())
    prior_lp = drawn.prior_logp  # kept by a sampler that ran the (truncated) prior beside the policy
    if prior_lp is None:
        prior_lp = target.prior.score(list(rows), drawn.ids, drawn.mask)
    prior_lp = prior_lp.to(target.prior.device).double()
    rewards = target.rewards(list(rows), drawn.ids, drawn.mask).to(prior_lp.device)
    logq, values = score(list(rows), drawn.ids, drawn.mask)
    prompt_index = torch.as_tensor([idx[g] for g in drawn.group.tolist()], dtype=torch.long)
    rollout = Rollout(drawn.ids, drawn.mask, drawn.group.to(prior_lp.device), prompt_index, rows, prior_lp,
                      logq.detach().double(), rewards, None if values is None else values.detach().double(),
                      drawn.log_weights, source)
    return rollout, logq, values


def policy_batch(rollout: Rollout, beta: float, logq: torch.Tensor, values: torch.Tensor | None,
                 log_z: torch.Tensor | None = None) -> PolicyBatch:
    """The loss's view of ``rollout`` with the current policy's log q (and values, log Z per row)."""
    return PolicyBatch(logq=logq.double(), old_logq=rollout.policy_logp, prior_logp=rollout.prior_logp,
                       mask=rollout.mask.to(logq.device), rewards=rollout.rewards, group=rollout.group,
                       beta=float(beta), proposal_log_probs=rollout.proposal_log_probs,
                       log_weights=rollout.log_weights, values=None if values is None else values.double(),
                       old_values=rollout.values, log_z=log_z)


def estimates(rollout: Rollout, beta: float) -> dict:
    """Per-batch estimates of a rollout of the policy's own samples (history columns)."""
    lq, lp, r = rollout.policy_logp.sum(-1), rollout.prior_logp.sum(-1), rollout.rewards
    kl0 = float((lq - lp).mean())
    return {"objective": float(r.mean()) - beta * kl0, "mean_reward": float(r.mean()), "kl_prior": kl0,
            "entropy": float(-lq.mean())}


def autocast_for(lm: CausalLM, bf16: bool):
    if bf16 and lm.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def forward(lm: CausalLM, prompts: Sequence[str], ids: torch.Tensor, mask: torch.Tensor,
            value_head: torch.nn.Module | None = None, bf16: bool = False,
            model: torch.nn.Module | None = None):
    """Per-token log q [n, T] (0 at padding, differentiable) and values [n, T] (or None).

    ``prompts`` has one prompt per row. Values are V(s_t): the head on the hidden state that
    predicts token t. ``model`` replaces ``lm.model`` in the pass (accelerate's wrapped module).
    """
    with autocast_for(lm, bf16):
        tok, h = lm.sequence_forward(list(prompts), ids, mask, model=model, hidden_states=value_head is not None)
    values = None
    if value_head is not None:
        values = value_head(h.detach().to(next(value_head.parameters()).dtype)).squeeze(-1)
        values = values.masked_fill(~mask.to(values.device), 0.0)
    return tok, values
