"""KV caches with room for the tokens SMC will append: one write per step instead of a copy.

A transformers ``DynamicLayer`` appends by concatenation, so every one-token step copies the whole
cache (O(rows x length) per step, quadratic over a run). SMC knows how many tokens can follow
(max_new_tokens), so its rows live in buffers with that room, and a step writes one position::

    buf = empty(m, H, L + room, d);  buf[:, :, :L] = keys      # once, at the start
    update(k_new):  buf[:, :, L] = k_new;  keys = buf[:, :, :L + 1]   # no copy of the first L
    reorder_cache(idx):  a new buffer of the same room, rows idx gathered (resampling, compaction)

States stay values: a step writes only past the end of the state it extends, which no state sees
yet. The shared ``tail`` (how far the buffer is written) lets only the first extension of a state
write in place; stepping the same state again falls back to the plain concatenation. Caches other
than a ``DynamicCache`` of plain ``DynamicLayer`` layers (sliding windows, quantised or offloaded
caches) and models restricted to a support model are left as they are.
"""

from __future__ import annotations

import copy

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from bayes_rlhf.models.cache import LMState


class _RoomLayer(DynamicLayer):
    """A ``DynamicLayer`` over buffers with free positions after its ``keys`` / ``values`` views."""

    _bufs: tuple[torch.Tensor, torch.Tensor] | None = None
    _tail: list | None = None  # [positions written], shared by every layer viewing the same buffers

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        bufs, L, q = self._bufs, self.keys.shape[-2], key_states.shape[-2]
        if bufs is None or self._tail[0] != L or L + q > bufs[0].shape[-2] or key_states.shape[0] != bufs[0].shape[0]:
            self._bufs = self._tail = None  # someone extended this state already, or no room: concatenate
            return super().update(key_states, value_states, *args, **kwargs)
        kbuf, vbuf = bufs
        kbuf[:, :, L:L + q].copy_(key_states)
        vbuf[:, :, L:L + q].copy_(value_states)
        self._tail[0] = L + q
        self.keys, self.values = kbuf[:, :, :L + q], vbuf[:, :, :L + q]
        return self.keys, self.values

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self._bufs is None:
            return super().reorder_cache(beam_idx)
        room = self._bufs[0].shape[-2]
        _fill(self, self.keys, self.values, beam_idx.to(self.keys.device), room)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._bufs is None:
            return super().batch_select_indices(indices)
        idx = torch.arange(self.keys.shape[0], device=self.keys.device)[indices]
        _fill(self, self.keys, self.values, idx, self._bufs[0].shape[-2])


def _gather(t: torch.Tensor, idx: torch.Tensor, capacity: int) -> torch.Tensor:
    """Rows ``idx`` of ``t`` [n, H, L, d] in a new buffer [m, H, capacity, d] (positions >= L unset)."""
    n, H, L, d = t.shape
    buf = torch.empty((idx.numel(), H, capacity, d), dtype=t.dtype, device=t.device)
    buf[:, :, :L] = t.index_select(0, idx)
    return buf


def _fill(layer: _RoomLayer, keys: torch.Tensor, values: torch.Tensor, idx: torch.Tensor, capacity: int) -> None:
    L = keys.shape[-2]
    kbuf, vbuf = _gather(keys, idx, capacity), _gather(values, idx, capacity)
    layer._bufs, layer._tail = (kbuf, vbuf), [L]
    layer.keys, layer.values = kbuf[:, :, :L], vbuf[:, :, :L]


def with_room(state: LMState, room: int) -> LMState:
    """``state`` with its KV rows copied once into buffers ``room`` positions longer (see the module
    docstring); the state itself when its cache is not a plain ``DynamicCache`` or ``room`` < 1."""
    cache = state.cache
    if (room < 1 or state.support is not None or type(cache) is not DynamicCache
            or getattr(cache, "offloading", False)
            or not all(type(layer) is DynamicLayer and layer.is_initialized and layer.keys.dim() == 4
                       for layer in cache.layers)):
        return state
    idx = torch.arange(state.batch_size, device=state.attention_mask.device)
    layers = []
    for layer in cache.layers:
        new = _RoomLayer.__new__(_RoomLayer)
        new.__dict__.update(layer.__dict__)
        _fill(new, layer.keys, layer.values, idx.to(layer.keys.device), layer.keys.shape[-2] + room)
        layers.append(new)
    new_cache = copy.copy(cache)
    new_cache.layers = layers
    return LMState(new_cache, state.attention_mask, state.positions, None)
