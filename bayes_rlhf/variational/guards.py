"""Stopping a run whose loss or gradient is no longer finite, with the step and the cause.

Every process of a multi-process run takes the same decision (``backend.any_process``), so none
is left waiting for the others' gradients.
"""

from __future__ import annotations

import torch

from bayes_rlhf.errors import BayesRLHFError


class TrainingDivergedError(BayesRLHFError):
    """The loss or gradient became NaN/inf. ``step`` and ``cause`` say when and why; the last
    good checkpoint (if any) is kept in ``checkpoint_dir``."""

    def __init__(self, step: int, cause: str):
        self.step, self.cause = step, cause
        super().__init__(f"training stopped at step {step}: {cause}")


def check_finite(step: int, loss: torch.Tensor, rewards: torch.Tensor, logq: torch.Tensor, backend) -> None:
    """Raise TrainingDivergedError when ``loss`` (a scalar) is not finite here or in another process.

    ``rewards`` [n] and ``logq`` [n, T] are the batch's, to say why."""
    finite = bool(torch.isfinite(loss))
    if not backend.any_process(not finite):
        return
    if finite:
        raise TrainingDivergedError(step, "the loss is not finite in another process; its error says why")
    bad_r = int((~torch.isfinite(rewards)).sum())
    if bad_r:
        cause = (f"the loss is {float(loss.detach())} because {bad_r} sampled completions have reward -inf (a hard "
                 "constraint); use objective='dpg' or 'distill', or give the constraint a finite penalty")
    elif not bool(torch.isfinite(logq).all()):
        cause = (f"the loss is {float(loss.detach())} because the policy's log-probs are not finite (its weights "
                 "overflowed); lower lr or set max_grad_norm")
    else:
        cause = f"the loss is {float(loss.detach())} (it overflowed); lower lr or set max_grad_norm"
    raise TrainingDivergedError(step, cause)
