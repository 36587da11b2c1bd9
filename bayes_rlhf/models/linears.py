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
weight's storage or in-place version changes, or for a trainable weight whenever an optimiser has
stepped (fused optimisers change parameters without bumping versions), so a result never depends
on a stale copy; in-place changes through ``.data`` escape both and are not supported. Copies
are bounded by ``MAX_COPY_BYTES`` in all; CUDA and other devices are left alone.

peft's LoRA layers (plain LoRA, one active adapter, no dropout, not merged, frozen base) run in
the same block as one ``x @ (W + s B A)^T``: the merged transposed weight is made from the base's
copy (``addmm``, into the same buffer) whenever an adapter weight changed, i.e. once per training
step, and serves every token of that step's sampling. peft's ``base(x) + B(A(x)) * s`` costs six
small kernels more per layer and token; its result differs from the merged one by rounding only.
"""

from __future__ import annotations

import contextlib
import weakref

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

MAX_ROWS = 64                 # token rows of a forward up to which the transposed layout is faster
MAX_COPY_BYTES = 2 * 1024 ** 3  # transposed copies kept, all modules together

_COPIES: "weakref.WeakKeyDictionary[torch.nn.Linear, tuple]" = weakref.WeakKeyDictionary()


# optimiser steps taken in this process (any optimiser: a global post-step hook). A fused optimiser
# (Adam(fused=True), the trainer's on CPU) updates parameters in place without bumping their version
# counters, so a copy of a trainable weight is also stale once any optimiser has stepped since
_STEPS = [0]


def _count_step(optimizer, args, kwargs) -> None:
    _STEPS[0] += 1


register_optimizer_step_post_hook(_count_step)


def _stamp(weight: torch.Tensor) -> tuple:
    """What a copy of ``weight`` depends on: its storage, in-place version, shape and dtype, and for a
    trainable weight the optimiser steps taken so far (``_STEPS``)."""
    return (weight.data_ptr(), weight._version, tuple(weight.shape), weight.dtype,
            _STEPS[0] if weight.requires_grad else 0)


def _transposed(module: torch.nn.Linear) -> torch.Tensor | None:
    """The contiguous transposed weight of a frozen ``module`` (made again if the weight changed);
    None for a trainable weight or past the copy budget."""
    w = module.weight
    if w.requires_grad:
        return None
    stamp, held = _stamp(w), _COPIES.get(module)
    if held is not None and held[0] == stamp:
        return held[1]
    _COPIES.pop(module, None)  # a stale copy: its bytes do not count against the budget
    size = sum(wt.numel() * wt.element_size() for _, wt in _COPIES.values())
    if size + w.numel() * w.element_size() > MAX_COPY_BYTES:
        return None
    _COPIES[module] = (stamp, w.detach().t().contiguous())
    return _COPIES[module][1]


def _forward_t(wt: torch.Tensor, bias: torch.Tensor | None):
    def forward(x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(x, wt)
        return y if bias is None else y + bias
    return forward


def _plain_lora(module) -> tuple | None:
    """(base, A, B, scaling) of a peft LoRA ``Linear`` in its plain state (one active adapter, plain
    LoRA, no dropout, not merged, a frozen ``nn.Linear`` base of the adapters' dtype), else None."""
    if (type(module).__name__ != "Linear" or not type(module).__module__.startswith("peft.")
            or module.merged or module.disable_adapters or len(module.active_adapters) != 1):
        return None
    name = module.active_adapters[0]
    if (name not in module.lora_A or name in getattr(module, "lora_variant", {})
            or type(module.lora_dropout[name]) is not torch.nn.Identity
            or type(module.base_layer) is not torch.nn.Linear):
        return None
    base, lora_a, lora_b = module.base_layer, module.lora_A[name], module.lora_B[name]
    if lora_a.bias is not None or lora_b.bias is not None or not lora_a.weight.dtype == base.weight.dtype:
        return None
    return base, lora_a.weight, lora_b.weight, float(module.scaling[name])


def _lora_parts(module) -> tuple | None:
    """``_plain_lora(module)``, kept while peft's adapter state (merged, disabled, active) is unchanged."""
    d = module.__dict__
    if not {"merged_adapters", "_disable_adapters", "_active_adapter"} <= d.keys():
        return _plain_lora(module)
    key = (tuple(d["merged_adapters"]), d["_disable_adapters"], str(d["_active_adapter"]))
    held = _PARTS.get(module)
    if held is None or held[0] != key:
        held = (key, _plain_lora(module))
        _PARTS[module] = held
    return held[1]


_PARTS: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _merged_transposed(module) -> torch.Tensor | None:
    """``(W + s B A)^T`` [in, out] of a plain LoRA layer, from the base's transposed copy; made again
    (into the same buffer) whenever the base or an adapter weight changed; None if not applicable."""
    parts = _lora_parts(module)
    if parts is None:
        return None
    base, a, b, scaling = parts
    stamp = (_stamp(base.weight), _stamp(a), _stamp(b), scaling)
    held = _COPIES.get(module)
    if held is not None and held[0] == stamp:
        return held[1]
    base_t = _transposed(base)
    if base_t is None:
        return None
    held = _COPIES.pop(module, None)
    buffer = held[1] if held is not None and held[1].shape == base_t.shape else None
    if buffer is None:
        size = sum(wt.numel() * wt.element_size() for _, wt in _COPIES.values())
        if size + base_t.numel() * base_t.element_size() > MAX_COPY_BYTES:
            return None
        buffer = torch.empty_like(base_t)
    _COPIES[module] = (stamp, torch.addmm(base_t, a.detach().t(), b.detach().t(), alpha=scaling, out=buffer))
    return buffer


def _candidates(model: torch.nn.Module) -> list:
    """``model``'s CPU ``nn.Linear`` and peft LoRA layers in module order, listed once per model (a
    layer added later runs its own forward: slower, never different)."""
    found = _CANDIDATES.get(model)
    if found is None:
        found = [m for m in model.modules()
                 if (type(m) is torch.nn.Linear and m.weight.device.type == "cpu")
                 or (hasattr(m, "lora_A") and type(getattr(m, "base_layer", None)) is torch.nn.Linear
                     and m.base_layer.weight.device.type == "cpu")]
        _CANDIDATES[model] = found
    return found


_CANDIDATES: "weakref.WeakKeyDictionary[torch.nn.Module, list]" = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def transposed_linears(model: torch.nn.Module, rows: int):
    """Within the block, ``model``'s stable CPU ``nn.Linear`` layers compute ``x @ Wt`` and its plain
    peft LoRA layers ``x @ (W + s B A)^T`` (a no-grad forward of at most ``MAX_ROWS`` token rows;
    otherwise, or under grad, nothing changes)."""
    if rows > MAX_ROWS or torch.is_grad_enabled():
        yield
        return
    patched, merged_bases = [], set()
    try:
        for m in _candidates(model):
            if "forward" in m.__dict__ or id(m) in merged_bases:
                continue
            lora = type(m) is not torch.nn.Linear
            wt = _merged_transposed(m) if lora else _transposed(m)
            if wt is not None:
                m.forward = _forward_t(wt, m.base_layer.bias if lora else m.bias)
                patched.append(m)
                if lora:
                    merged_bases.add(id(m.base_layer))  # not called inside a merged layer
        yield
    finally:
        for m in patched:
            del m.forward
