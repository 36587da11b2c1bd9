"""Re-indexing a KV cache into buffers with room for the next token (the walk's one copy per step).

A plain re-index followed by a one-token forward copies every cached row twice: ``reindex``
gathers the rows (``index_select``), and the forward's ``DynamicLayer.update`` concatenates the
new key and value onto them (``torch.cat``). The walk knows that exactly one token follows, so
it gathers the rows straight into a buffer one position longer::

    buf = empty(m, H, L + 1, d)
    buf[:, :, :L] = keys[idx]          # one index_select into the strided view
    layer.keys = buf[:, :, :L]         # what the model sees before the step (length L)
    update(k_new):  buf[:, :, L] = k_new;  layer.keys = buf      # no concatenation

The numbers are those of the plain path (the same values, the same layout after the step); only
a copy is saved. Caches other than a ``DynamicCache`` of plain ``DynamicLayer`` layers (sliding
windows, quantised or offloaded caches) and models restricted to a support model take the plain
path (``slot_reindex`` returns None).
"""

from __future__ import annotations

import copy

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from bayes_rlhf.models.causal_lm import LMState

__all__ = ["slot_reindex", "supports_slots"]


class _SlotLayer(DynamicLayer):
    """A ``DynamicLayer`` whose rows live in buffers with one free position; the next one-token
    ``update`` writes there instead of concatenating. Any other update behaves as a DynamicLayer."""

    _slots: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        slots = self._slots
        if slots is None or key_states.shape[-2] != 1:
            self._slots = None
            return super().update(key_states, value_states, *args, **kwargs)
        kbuf, vbuf = slots
        L = self.keys.shape[-2]
        kbuf[:, :, L:].copy_(key_states)
        vbuf[:, :, L:].copy_(value_states)
        self.keys, self.values, self._slots = kbuf, vbuf, None
        return kbuf, vbuf


def _gather_with_slot(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` of ``t`` [n, H, L, d] in a new buffer [m, H, L + 1, d] (the last position unset)."""
    n, H, L, d = t.shape
    m = idx.numel()
    buf = torch.empty((m, H, L + 1, d), dtype=t.dtype, device=t.device)
    # as 2-d rows of L*d values (one per row and head), gathered into the strided [m*H, :L*d] view
    rows = (idx[:, None] * H + torch.arange(H, device=idx.device)).reshape(-1)
    torch.index_select(t.contiguous().view(n * H, L * d), 0, rows, out=buf.view(m * H, (L + 1) * d)[:, : L * d])
    return buf


def supports_slots(state: LMState) -> bool:
    """Whether ``state``'s cache is a ``DynamicCache`` of initialised plain layers, without a support model."""
    cache = state.cache
    if state.support is not None or type(cache) is not DynamicCache or getattr(cache, "offloading", False):
        return False
    return all(type(layer) in (DynamicLayer, _SlotLayer) and layer.is_initialized and layer.keys.dim() == 4
               for layer in cache.layers)


def slot_reindex(state: LMState, idx: torch.Tensor) -> LMState | None:
    """``state.reindex(idx)`` whose next one-token step writes into a free slot (see the module
    docstring), or None when the cache is not one this applies to."""
    if not supports_slots(state):
        return None
    cache = state.cache
    idx = idx.to(state.attention_mask.device)
    new_layers = []
    for layer in cache.layers:
        new = _SlotLayer.__new__(_SlotLayer)
        new.__dict__.update(layer.__dict__)
        kbuf, vbuf = _gather_with_slot(layer.keys, idx), _gather_with_slot(layer.values, idx)
        new.keys, new.values, new._slots = kbuf[:, :, :-1], vbuf[:, :, :-1], (kbuf, vbuf)
        new_layers.append(new)
    new_cache = copy.copy(cache)
    new_cache.layers = new_layers
    return LMState(new_cache, state.attention_mask[idx], state.positions[idx], None)
