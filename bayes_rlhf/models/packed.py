"""Sampling's one-token forwards through MKL's packed GEMM (CPU, float32).

Ancestral sampling runs the model once per token on the same n rows (n completions, one token
each), and every such forward streams all of the weights. torch's CPU GEMM packs the weight's
panels again on every call, which for so few rows costs more than the product itself: on
SmolLM2-135M (8 rows, one thread) the ``nn.Linear`` products ran at 4-6 GB/s of weights against
14 GB/s for a plain read. MKL's packed API (``cblas_sgemm_pack`` / ``cblas_sgemm_compute``, in
torch as ``torch.ops.mkl._mkl_reorder_linear_weight`` and ``_mkl_linear``) packs a weight once
and then computes from the packed copy: 16 tokens x 8 rows of SmolLM2 sampled in 1.68 s of CPU
against 2.25 s (plain) and 2.08 s (transposed copies, ``linears``).

``packed_linears(model, rows)`` patches, for one block (``sampling.sample`` wraps its whole loop),
every CPU float32 ``nn.Linear`` of ``model`` and every plain peft LoRA layer::

    nn.Linear    y = x W^T + b                 from W's packed copy (made once per block, or kept
                                               from an earlier block while W is unchanged)
    LoRA layer   y = x W^T + b + s (x A^T) B^T  W (frozen) packed, A and B read as they are

A forward with another row count than ``rows`` (the prompt pass), under grad, or in another
dtype runs the module's own forward: the block changes which kernel computes a no-grad product,
never what it computes (results differ from the plain kernels by float32 rounding only). A
packed copy is made again whenever its weight's storage or in-place version changed, so a
trainable weight (full fine-tuning) is packed once per sampling call, after each optimiser step.
Where torch lacks these MKL operators (or their self-check fails) nothing is patched.
"""

from __future__ import annotations

import contextlib
import weakref

import torch

from bayes_rlhf.models.linears import MAX_ROWS, _candidates, _lora_parts, _stamp

MAX_PACKED_BYTES = 2 * 1024 ** 3  # packed copies kept, all modules together (counted as the weights' bytes)

_PACKED: "weakref.WeakKeyDictionary[torch.nn.Linear, tuple]" = weakref.WeakKeyDictionary()
_STATE = {"ok": None}


def available() -> bool:
    """True when torch has MKL's packed linear operators and they agree with ``F.linear`` (checked once)."""
    if _STATE["ok"] is None:
        _STATE["ok"] = _self_check()
    return _STATE["ok"]


def _self_check() -> bool:
    try:
        if not torch.backends.mkl.is_available():
            return False
        gen = torch.Generator().manual_seed(0)
        w = torch.randn(40, 24, generator=gen)
        x, b = torch.randn(3, 24, generator=gen), torch.randn(40, generator=gen)
        with torch.no_grad():
            packed = torch.ops.mkl._mkl_reorder_linear_weight(w, 3)
            got = torch.ops.mkl._mkl_linear(x, packed, w, b, 3)
        return bool(torch.allclose(got, torch.nn.functional.linear(x, w, b), rtol=1e-5, atol=1e-5))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def _packed(linear: torch.nn.Linear, rows: int) -> torch.Tensor | None:
    """MKL's packed copy of ``linear.weight`` for ``rows`` rows (made again if the weight changed);
    None past the copy budget."""
    w = linear.weight
    stamp = (_stamp(w), rows)
    held = _PACKED.get(linear)
    if held is not None and held[0] == stamp:
        return held[1]
    _PACKED.pop(linear, None)  # stale: freed before its successor is made
    size = sum(weight_bytes for _, _, weight_bytes in _PACKED.values())
    nbytes = w.numel() * w.element_size()
    if size + nbytes > MAX_PACKED_BYTES:
        return None
    with torch.no_grad():
        packed = torch.ops.mkl._mkl_reorder_linear_weight(w.detach(), rows)
    _PACKED[linear] = (stamp, packed, nbytes)
    return packed


def _eligible(x: torch.Tensor, rows: int) -> bool:
    return (not torch.is_grad_enabled() and x.dtype == torch.float32 and x.device.type == "cpu"
            and x.dim() >= 2 and x.numel() == rows * x.shape[-1])


def _linear_forward(module: torch.nn.Linear, packed: torch.Tensor, rows: int):
    weight, bias, own = module.weight, module.bias, type(module).forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not _eligible(x, rows):
            return own(module, x)
        return torch.ops.mkl._mkl_linear(x, packed, weight, bias, rows)
    return forward


def _lora_forward(module, parts: tuple, packed: torch.Tensor, rows: int):
    base, a, b, scaling = parts
    own = type(module).forward

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args or kwargs or not _eligible(x, rows) or _lora_parts(module) is not parts:
            return own(module, x, *args, **kwargs)  # also when peft's adapter state changed in the block
        y = torch.ops.mkl._mkl_linear(x, packed, base.weight, base.bias, rows)
        flat = x.reshape(rows, x.shape[-1])
        y.view(rows, -1).addmm_(flat @ a.t(), b.t(), alpha=scaling)
        return y
    return forward


def _float32_cpu(linear: torch.nn.Linear) -> bool:
    return linear.weight.dtype == torch.float32 and linear.weight.device.type == "cpu"


@contextlib.contextmanager
def packed_linears(model: torch.nn.Module, rows: int):
    """Within the block, ``model``'s CPU float32 linear layers compute no-grad products of exactly
    ``rows`` rows from MKL-packed weights (see the module docstring); nothing changes without
    MKL's packed operators, for ``rows > MAX_ROWS`` or for a layer already patched."""
    if rows < 1 or rows > MAX_ROWS or not available():
        yield
        return
    patched, adapters = [], set()
    try:
        for m in _candidates(model):
            if "forward" in m.__dict__ or id(m) in adapters:
                continue
            if type(m) is torch.nn.Linear:
                packed = _packed(m, rows) if _float32_cpu(m) else None
                if packed is not None:
                    m.forward = _linear_forward(m, packed, rows)
                    patched.append(m)
                continue
            parts = _lora_parts(m)
            adapters.update(id(a) for d in (m.lora_A, m.lora_B) for a in d.values())  # read, never called
            if parts is None or not _float32_cpu(parts[0]) or parts[1].dtype != torch.float32:
                continue
            packed = _packed(parts[0], rows)
            if packed is not None:
                m.forward = _lora_forward(m, parts, packed, rows)
                patched.append(m)
                if "forward" not in parts[0].__dict__:  # the base is not called inside: no transposed copy
                    parts[0].forward = _linear_forward(parts[0], packed, rows)
                    patched.append(parts[0])
        yield
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)
