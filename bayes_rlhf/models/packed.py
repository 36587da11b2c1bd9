"""Sampling's one-token forwards through MKL's packed GEMM (CPU, float32).

Ancestral sampling runs the model once per token on the same n rows (n completions, one token
each), and every such forward streams all of the weights. For so few rows torch's CPU GEMM is
far from that floor (presumably it re-packs the weight's panels on every call, as BLAS GEMMs
do): on SmolLM2-135M (8 rows, one thread) the ``nn.Linear`` products ran at 4-6 GB/s of weights
against 14 GB/s for a plain read. MKL's packed API (``cblas_sgemm_pack`` / ``cblas_sgemm_compute``, in
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
packed copy is made again whenever its weight's storage or in-place version changed (or, for a
trainable weight, after any optimiser step: ``linears._stamp``), so a
trainable weight (full fine-tuning) is packed once per sampling call, after each optimiser step
(all of SmolLM2's weights: about 0.26 s, against 0.5-0.6 s gained over the 16 tokens; the fresh
buffers also cost page faults, up to 0.6 s of system time a step once the heap is fragmented by
earlier runs in the process, less with torch's ``THP_MEM_ALLOC_ENABLE=1``). A frozen weight (a
LoRA base, a prior) is packed once.
A packed copy serves one row count (MKL packs for a given M), so copies for several row counts
are kept side by side (a prompt pass's and the steps'), all models together within
``MAX_PACKED_BYTES``; past it the least recently used copies are dropped, never one the current
block uses (its remaining layers then run the plain kernels). ``packed_repeat`` packs a prompt
pass only when the model ran that many prompt rows before with the same weights: one forward does
not repay its packing, a prompt run again and again (repeated SMC runs, a sweep over N) does.
Where torch lacks these MKL operators (or their self-check fails) nothing is patched; ``set_enabled(False)``
turns them off for the process.

``base_half=True`` runs a LoRA model and its base (adapters off) in the same forwards: the batch's
second half skips the low-rank term. Sampling a LoRA policy this way (``sampling.sample_with_base``,
2n rows per one-token step) gives the prior's log-probs of the draws at the cost of n more rows on
weights that are streamed anyway (SmolLM2, LoRA r = 8: 16 rows sampled in 2.3-2.5 s against 2.1-2.2 s
for 8, where scoring the draws under the prior afterwards took 0.45-0.6 s).
"""

from __future__ import annotations

import contextlib
import weakref

import torch

from bayes_rlhf.errors import ConfigError
from bayes_rlhf.models.linears import _STEPS, MAX_ROWS, _candidates, _lora_parts, _stamp

# below this many rows the plain kernels are faster (SmolLM2, one thread, CPU seconds of sampling 12
# tokens: 1 row 1.07 packed against 0.95 plain, 2 rows 1.10 / 1.04, 4 rows 1.27 / 1.46, 8 rows 1.5 / 1.9)
MIN_ROWS = 4
MAX_PACKED_BYTES = 2 * 1024 ** 3  # packed copies kept, all modules together (counted as the weights' bytes)

# per linear layer, {rows: [weight stamp, packed copy, bytes, tick of last use]}
_PACKED: "weakref.WeakKeyDictionary[torch.nn.Linear, dict]" = weakref.WeakKeyDictionary()
_TICK = [0]
# per model, (optimiser steps, its linear weights' bytes, row counts of the prompt forwards it ran
# since) (``packed_repeat``)
_PROMPT_ROWS: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()
_STATE = {"ok": None}


def set_enabled(enabled: bool) -> None:
    """Use the packed kernels where torch has them (``True``, the default) or never (``False``, e.g. to
    reproduce draws made with the plain kernels bit for bit), for this process."""
    if not isinstance(enabled, bool):
        raise ConfigError(f"set_enabled takes True or False, got {enabled!r}")
    _STATE["ok"] = None if enabled else False


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


def _packed(linear: torch.nn.Linear, rows: int, since: int = 0) -> torch.Tensor | None:
    """MKL's packed copy of ``linear.weight`` for ``rows`` rows (made again if the weight changed).

    Copies for several row counts are kept (a prompt's and the steps'); past the copy budget the
    least recently used copies are dropped, never one used since the tick ``since`` (the current
    block's), and None is returned when that does not make room."""
    w = linear.weight
    stamp = _stamp(w)
    copies = _PACKED.setdefault(linear, {})
    for r in [r for r, held in copies.items() if held[0] != stamp]:
        del copies[r]  # stale: freed before its successor is made
    _TICK[0] += 1
    held = copies.get(rows)
    if held is not None:
        held[3] = _TICK[0]
        return held[1]
    nbytes = w.numel() * w.element_size()
    if not _make_room(MAX_PACKED_BYTES - nbytes, since):
        return None
    with torch.no_grad():
        packed = torch.ops.mkl._mkl_reorder_linear_weight(w.detach(), rows)
    copies[rows] = [stamp, packed, nbytes, _TICK[0]]
    return packed


def _make_room(limit: int, since: int) -> bool:
    """Drop least recently used copies (none used at or after tick ``since``) until at most ``limit``
    bytes are held; False if that is not possible."""
    held = sorted((h[3], r, lin) for lin, copies in _PACKED.items() for r, h in copies.items())
    total = sum(_PACKED[lin][r][2] for _, r, lin in held)
    for tick, r, lin in held:
        if total <= limit or tick >= since:
            break
        total -= _PACKED[lin].pop(r)[2]
    return total <= limit


def held_copy(linear: torch.nn.Linear, rows: int | None = None) -> torch.Tensor | None:
    """The packed copy of ``linear`` kept for ``rows`` rows (None: the most recently used one), or None."""
    copies = _PACKED.get(linear, {})
    if rows is not None:
        return copies[rows][1] if rows in copies else None
    return max(copies.values(), key=lambda h: h[3])[1] if copies else None


def _eligible(x: torch.Tensor, rows: int) -> bool:
    return (not torch.is_grad_enabled() and x.dtype == torch.float32 and x.device.type == "cpu"
            and x.dim() >= 2 and x.numel() == rows * x.shape[-1])


def _linear_forward(module: torch.nn.Linear, packed: torch.Tensor, rows: int):
    weight, bias, own = module.weight, module.bias, type(module).forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not _eligible(x, rows):
            return own(module, x)
        return torch.ops.mkl._mkl_linear(x.contiguous(), packed, weight, bias, rows)
    return forward


def _lora_forward(module, parts: tuple, packed: torch.Tensor | None, rows: int, base_half: bool):
    base, a, b, scaling = parts
    own = type(module).forward

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if not base_half:
            if packed is None or args or kwargs or not _eligible(x, rows) or _lora_parts(module) is not parts:
                return own(module, x, *args, **kwargs)  # also when peft's adapter state changed in the block
            y = torch.ops.mkl._mkl_linear(x.contiguous(), packed, base.weight, base.bias, rows)
            y.view(rows, -1).addmm_(x.reshape(rows, x.shape[-1]) @ a.t(), b.t(), alpha=scaling)
            return y
        # base_half: the second half of the batch runs the base alone; peft's forward cannot do that
        if args or kwargs or torch.is_grad_enabled() or _lora_parts(module) is not parts or x.shape[0] % 2:
            raise ConfigError("packed_linears(base_half=True) serves no-grad forwards of an even batch of plain "
                              "LoRA layers only; run other forwards outside the block")
        if packed is not None and _eligible(x, rows):
            y = torch.ops.mkl._mkl_linear(x.contiguous(), packed, base.weight, base.bias, rows)
        else:
            y = torch.nn.functional.linear(x, base.weight, base.bias)
        h = x.shape[0] // 2
        y[:h].view(-1, y.shape[-1]).addmm_(x[:h].reshape(-1, x.shape[-1]) @ a.t(), b.t(), alpha=scaling)
        return y
    return forward


def _lora_layers(model: torch.nn.Module) -> list:
    return [m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]


def plain_lora(model: torch.nn.Module) -> bool:
    """True when ``model`` has LoRA layers and every one is plain (``linears._plain_lora``), float32 on CPU:
    what ``packed_linears(model, rows, base_half=True)`` needs."""
    layers = _lora_layers(model)
    return bool(layers) and all(
        (parts := _lora_parts(m)) is not None and _float32_cpu(parts[0]) and parts[1].dtype == torch.float32
        for m in layers)


def _float32_cpu(linear: torch.nn.Linear) -> bool:
    return linear.weight.dtype == torch.float32 and linear.weight.device.type == "cpu"


@contextlib.contextmanager
def packed_linears(model: torch.nn.Module, rows: int, base_half: bool = False):
    """Within the block, ``model``'s CPU float32 linear layers compute no-grad products of exactly
    ``rows`` rows from MKL-packed weights (see the module docstring); nothing changes without
    MKL's packed operators, for ``rows < MIN_ROWS`` (unless ``base_half``) or ``rows > MAX_ROWS``, or for
    a layer already patched.

    ``base_half``: every forward's batch is two halves, the first through the LoRA model and the
    second through its base alone (adapters off), e.g. a policy and its prior on the same
    prefixes; every LoRA layer must be plain (``plain_lora(model)``, else ``ConfigError``).
    """
    if base_half and not (available() and plain_lora(model) and rows <= MAX_ROWS and rows % 2 == 0):
        raise ConfigError("packed_linears(base_half=True) needs MKL's packed operators, a model whose LoRA "
                          f"layers are all plain float32 on CPU and an even row count <= {MAX_ROWS} (got {rows})")
    if rows < (1 if base_half else MIN_ROWS) or rows > MAX_ROWS or not available():
        yield
        return
    patched, adapters, since = [], set(), _TICK[0] + 1
    try:
        for m in _candidates(model):
            if "forward" in m.__dict__ or id(m) in adapters:
                continue
            if type(m) is torch.nn.Linear:
                packed = _packed(m, rows, since) if _float32_cpu(m) else None
                if packed is not None:
                    m.forward = _linear_forward(m, packed, rows)
                    patched.append(m)
                continue
            parts = _lora_parts(m)
            adapters.update(id(a) for d in (m.lora_A, m.lora_B) for a in d.values())  # read, never called
            if parts is None or not _float32_cpu(parts[0]) or parts[1].dtype != torch.float32:
                continue
            packed = _packed(parts[0], rows, since)
            if packed is not None or base_half:
                m.forward = _lora_forward(m, parts, packed, rows, base_half)
                patched.append(m)
                if packed is not None and "forward" not in parts[0].__dict__:  # not called inside: no copy
                    parts[0].forward = _linear_forward(parts[0], packed, rows)
                    patched.append(parts[0])
        if base_half and any("forward" not in m.__dict__ for m in _lora_layers(model)):
            raise ConfigError("packed_linears(base_half=True): a LoRA layer of the model was patched already "
                              "or added after its first use; run the forward outside other patching blocks")
        yield
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)


def packed_lm(lm, rows: int) -> contextlib.ExitStack:
    """``packed_linears(net, rows)`` for a CausalLM's model and, when it is restricted to a support,
    the support model it runs beside (both step the same rows)."""
    stack = contextlib.ExitStack()
    for net in [lm.model] + ([lm.support.model] if lm.support is not None else []):
        stack.enter_context(packed_linears(net, rows))
    return stack


def packed_repeat(model: torch.nn.Module, rows: int):
    """``packed_linears(model, rows)`` for a no-grad forward of ``rows`` token rows (a prompt pass) that
    ``model`` ran before with the same weights (no optimiser step since), else a block that changes
    nothing. The first such forward runs plain: one forward does not repay packing (SmolLM2: about
    2 s the first time), but a prompt run again and again (SMC or importance sampling repeated on one
    prompt, a sweep over N) is then computed from packed copies kept beside the steps' (18 positions
    of SmolLM2, one thread: 0.10 s against 0.17 s). A model in training never repeats: its prompt
    passes stay plain; nor does a model whose linear weights exceed half of ``MAX_PACKED_BYTES``
    (its prompt's copies and its steps' would evict each other)."""
    if not (MIN_ROWS <= rows <= MAX_ROWS) or torch.is_grad_enabled() or not available():
        return contextlib.nullcontext()
    steps, weights, seen = _PROMPT_ROWS.get(model, (None, 0, set()))
    if steps != _STEPS[0]:  # an optimiser has stepped: what ran before no longer counts
        weights = sum(m.weight.numel() * m.weight.element_size() for m in model.modules()
                      if type(m) is torch.nn.Linear)  # counted once per model and optimiser step
        steps, seen = _STEPS[0], set()
        _PROMPT_ROWS[model] = (steps, weights, seen)
    if rows not in seen:
        seen.add(rows)
        return contextlib.nullcontext()
    if 2 * weights > MAX_PACKED_BYTES:  # no room beside the steps' copies: they would evict each other every run
        return contextlib.nullcontext()
    return packed_linears(model, rows)
