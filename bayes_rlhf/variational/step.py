"""One training step, the same for every objective (the objective's record says what differs)::

    idx          = the step's prompts
    rollout, lq  = make_rollout(idx, the objective's source, the differentiable forward)
    [learned log Z: start each new prompt's at its first batch's ELBO estimate]
    repeat inner_epochs:  loss = objective.loss(policy_batch(rollout, lq));  backward; clip; Adam step
                          (lq recomputed after the first epoch)
    estimates    = from the rollout when it is the policy's own samples, else from fresh policy samples
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from bayes_rlhf.variational import rollout as ro
from bayes_rlhf.variational.guards import TrainingDivergedError, check_finite
from bayes_rlhf.variational.state import RunState


@dataclass(frozen=True)
class Draws:
    """The step's sample sources: ``train`` (the objective's) and ``policy`` (q's own samples, for the
    estimates of an objective trained off-policy; None when ``train`` is q already)."""

    train: Callable
    policy: Callable | None


def train_step(run: RunState, step: int, draws: Draws) -> dict:
    """Sample, update and measure once; the history row of the step."""
    t0, c0 = time.perf_counter(), time.process_time()
    idx = run.step_prompts()
    rollout, logq, values = ro.make_rollout(run.target, run.prompts, idx, draws.train, run.generator,
                                            run.objective.source.kind, lambda *x: _forward(run, *x))
    run.reward_evals += len(rollout)
    if run.objective.learns_log_z:
        run.init_log_z(rollout, idx)
    stats = _update(run, step, rollout, logq, values)
    seen = rollout
    if draws.policy is not None:  # the batch came from pi0 or pi*: draw policy samples for the estimates
        with torch.no_grad():
            seen, _, _ = ro.make_rollout(run.target, run.prompts, idx, draws.policy, run.generator, "policy",
                                         lambda rows, ids, mask: (run.policy.score(rows, ids, mask), None))
        run.reward_evals += len(seen)
    tokens = int(rollout.mask.sum())
    dt = time.perf_counter() - t0
    row = {"step": step, **ro.estimates(seen, run.target.beta), "loss": stats.pop("loss"),
           "grad_norm": stats.pop("grad_norm"), "tokens_per_s": tokens / dt if dt > 0 else None,
           "reward_evals": run.reward_evals, "time": dt, "cpu_time": time.process_time() - c0,
           "kl_q_posterior": None, "kl_posterior_q": None,
           "log_z": float(run.log_z.detach().mean()) if run.objective.learns_log_z else None}
    row.update(stats)
    return row


def _forward(run: RunState, rows, ids, mask):
    return ro.forward(run.policy, rows, ids, mask, run.train_value_head, run.config.bf16, model=run.train_model)


def _update(run: RunState, step: int, rollout: ro.Rollout, logq: torch.Tensor, values) -> dict:
    """``inner_epochs`` gradient steps on one rollout; the last step's loss statistics."""
    stats: dict = {}
    max_norm = run.config.max_grad_norm if run.config.max_grad_norm is not None else float("inf")
    for epoch in range(run.objective.inner_epochs):
        if epoch > 0:
            logq, values = _forward(run, list(rollout.rows), rollout.ids, rollout.mask)
        batch = ro.policy_batch(rollout, run.target.beta, logq, values, run.row_log_z(rollout, logq.device))
        out = run.objective.loss(batch)
        check_finite(step, out.loss, rollout.rewards, logq, run.backend)
        run.opt.zero_grad(set_to_none=True)
        run.backend.backward(out.loss)
        if run.objective.learns_log_z:
            run.backend.average_grad(run.log_z)  # not in a prepared module: DDP does not average it
        gn = run.backend.clip_grad_norm_(run.params, max_norm)
        if gn is not None and (gn != gn or gn == float("inf")):
            raise TrainingDivergedError(step, f"the gradient norm is {gn}; lower lr or set max_grad_norm")
        run.opt.step()
        stats = dict(out.stats) | {"loss": float(out.loss.detach()), "grad_norm": gn}
    return stats
