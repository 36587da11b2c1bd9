"""Small-batch CPU forwards with transposed copies of weights that do not change.

``nn.Linear`` computes ``x @ W.T`` with ``W`` stored [out, in]. On CPU, for the few rows of a
sampling step (n completions, one token each) that layout took up to twice as long as ``x @ Wt``
with a contiguous ``Wt`` [in, out] on SmolLM2's shapes (one matrix alone, 8 rows, one thread; a
whole sampling step gained 7-15% on a loaded machine); from about 64 rows on the two are alike.
``transposed_linears(model, rows)`` runs a forward with ``x @ Wt`` for every ``nn.Linear`` whose
weight is frozen (``requires_grad`` False: LoRA's base layers, a model after
``requires_grad_(False)``); trainable weights keep ``nn.Linear``, so which kernel runs
depends on the model's flags only, never on what ran before (a resumed run repeats the original
bit for bit).

A copy is kept beside its module (weakly: it goes with the module) and made again whenever the
weight's storage or in-place version changes, so a result never depends on a stale copy. Copies
are bounded by ``MAX_COPY_BYTES`` in all; CUDA and other devices are left alone.
"""

from __future__ import annotations

import contextlib
import weakref

import torch

MAX_ROWS = 64                 # token rows of a forward up to which the transposed layout is faster
MAX_COPY_BYTES = 2 * 1024 ** 3  # transposed copies kept, all modules together

_COPIES: "weakref.WeakKeyDictionary[torch.nn.Linear, tuple]" = weakref.WeakKeyDictionary()


def _stamp(weight: torch.Tensor) -> tuple:
    return weight.data_ptr(), weight._version, tuple(weight.shape), weight.dtype


def _transposed(module: torch.nn.Linear) -> torch.Tensor | None:
    """The contiguous transposed weight of a frozen ``module`` (made again if the weight changed);
    None for a trainable weight or past the copy budget."""
    w = module.weight
    if w.requires_grad:
        return None
    stamp, held = _stamp(w), _COPIES.pop(module, None)
    if held is None or held[0] != stamp:
        size = sum(wt.numel() * wt.element_size() for _, wt in _COPIES.values())
        if size + w.numel() * w.element_size() > MAX_COPY_BYTES:
            return None
        held = (stamp, w.detach().t().contiguous())
    _COPIES[module] = held
    return held[1]


def _forward_t(wt: torch.Tensor, bias: torch.Tensor | None):
    def forward(x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(x, wt)
        return y if bias is None else y + bias
    return forward


@contextlib.contextmanager
def transposed_linears(model: torch.nn.Module, rows: int):
    """Within the block, ``model``'s stable CPU ``nn.Linear`` layers compute ``x @ Wt`` (a no-grad
    forward of at most ``MAX_ROWS`` token rows; otherwise, or under grad, nothing changes)."""
    if rows > MAX_ROWS or torch.is_grad_enabled():
        yield
        return
    patched = []
    try:
        for m in model.modules():
            if type(m) is torch.nn.Linear and m.weight.device.type == "cpu" and "forward" not in m.__dict__:
                wt = _transposed(m)
                if wt is not None:
                    m.forward = _forward_t(wt, m.bias)
                    patched.append(m)
        yield
    finally:
        for m in patched:
            del m.forward
