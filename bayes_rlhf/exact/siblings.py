"""The walk's last forward: every child of a parent as one query block over the parent's own cache.

At the last depth the walk needs the next-token logits of every prefix of length T - 1, and
each is a parent's cached prefix plus one token. Instead of copying each parent's KV cache to
each of its children (one row per child), the children of a parent go in as the k query
positions of the parent's row, at the same position, each seeing the parent's cache and itself
only::

    par, counts = runs of equal rows        # n parents, counts[i] children each, k = max count
    ids  [n, k]   = the children's tokens (padded)
    pos  [n, k]   = the parent's next position
    cache         = the parents' rows (a view when they are consecutive, as in a full tree)
    logits [n, k, V] = model(ids, pos, cache)  ->  the children's rows

Each attention layer runs ``_sibling_attention``: the k queries against the parent's L keys
(one batched matmul, the parent's padding masked) and each query against its own key (an
elementwise product), one softmax over the L + 1 scores. No [k, L + k] score matrix is formed
and nothing is concatenated onto the cache (the layer keeps the children's keys aside,
``_SiblingLayer``). The numbers are the one-token step's up to float rounding (the same sums).
Used only for ``DynamicCache`` models without a support model whose attention runs through
transformers' ``AttentionInterface``, after a check on the first chunk against the one-token
step; otherwise, and for chunks where padding would exceed half the rows, the walk takes the
one-token step.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from transformers import AttentionInterface
from transformers.cache_utils import DynamicLayer

from bayes_rlhf.exact.slots import supports_slots
from bayes_rlhf.models.cache import cache_argument
from bayes_rlhf.models.causal_lm import CausalLM, LMState

__all__ = ["sibling_logits"]

# relative agreement the first chunk must show with the one-token step (float32 rounding is ~1e-6)
_CHECK_TOL = 1e-4
_IMPLEMENTATION = "bayes_rlhf_siblings"
# attention arguments the sibling attention does not implement: a model passing any is declined
_UNSUPPORTED = ("softcap", "sliding_window", "s_aux", "position_bias")


class _SiblingLayer(DynamicLayer):
    """A parent rows' cache layer; the sibling forward's ``update`` keeps the children's own keys
    and values in ``own`` and returns the parents' (nothing concatenated)."""

    own: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        self.own = (key_states, value_states)
        return self.keys, self.values


class _Declined(Exception):
    """The model asked the sibling attention for something it does not implement."""


_active: list = []  # the cache of the sibling forward in progress (its layers hold the children's keys)


def _sibling_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query [n, H, k, d] (the children), key / value [n, Hkv, L, d] (their parent), the children's
    own keys in the cache layer; attention_mask [n, 1, 1, L] additive. Returns [n, k, H, d]."""
    if not _active or any(kwargs.get(a) is not None for a in _UNSUPPORTED) or dropout:
        raise _Declined
    own_k, own_v = _active[-1].layers[module.layer_idx].own
    n, H, k, d = query.shape
    h = key.shape[1]
    g, L = H // h, key.shape[2]
    q = query.reshape(n, h, g, k, d) * (d ** -0.5 if scaling is None else scaling)
    shared = torch.matmul(q.reshape(n, h, g * k, d), key.transpose(-1, -2)).add_(attention_mask)
    own = (q * own_k[:, :, None]).sum(-1, keepdim=True).view(n, h, g * k, 1)
    if q.dtype.itemsize < 4:  # the softmax in float32 at least, as the attention kernels do
        shared, own = shared.float(), own.float()
    top = torch.maximum(shared.amax(-1, keepdim=True), own)
    e, e_own = shared.sub_(top).exp_(), own.sub_(top).exp_()
    z = e.sum(-1, keepdim=True).add_(e_own)
    out = torch.matmul(e.to(value.dtype), value).view(n, h, g, k, d)
    out.add_(e_own.to(value.dtype).view(n, h, g, k, 1) * own_v[:, :, None]).div_(z.to(value.dtype).view(n, h, g, k, 1))
    return out.view(n, H, k, d).transpose(1, 2), None


AttentionInterface.register(_IMPLEMENTATION, _sibling_attention)


@contextlib.contextmanager
def _sibling_mode(lm: CausalLM, cache):
    """Route ``lm``'s attention through ``_sibling_attention`` for one forward over ``cache``."""
    config = lm.model.config
    saved = config._attn_implementation
    config._attn_implementation = _IMPLEMENTATION
    _active.append(cache)
    try:
        yield
    finally:
        _active.pop()
        config._attn_implementation = saved


def _parent_cache(state: LMState, par: torch.Tensor):
    """``state``'s cache of the rows ``par`` as ``_SiblingLayer`` layers (views when consecutive)."""
    a, n = int(par[0]), par.numel()
    consecutive = int(par[-1]) - a + 1 == n
    idx = None if consecutive else par.to(state.attention_mask.device)
    cache = copy.copy(state.cache)
    layers = []
    for layer in state.cache.layers:
        new = _SiblingLayer.__new__(_SiblingLayer)
        new.__dict__.update(layer.__dict__)
        new.__dict__.pop("_slots", None)
        new.keys, new.values = ((layer.keys[a: a + n], layer.values[a: a + n]) if consecutive else
                                (layer.keys[idx], layer.values[idx]))
        layers.append(new)
    cache.layers = layers
    att = state.attention_mask[a: a + n] if consecutive else state.attention_mask[idx]
    pos = state.positions[a: a + n] if consecutive else state.positions[idx]
    return cache, att, pos


def sibling_logits(lm: CausalLM, state: LMState, rows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor | None:
    """Logits [m, V] of ``state``'s rows ``rows`` (non-decreasing) each extended by ``tokens``,
    from one forward over the distinct parents (see the module docstring); None when the cache is
    not one this applies to or the padding would exceed half the rows."""
    if not supports_slots(state):
        return None
    par, counts = torch.unique_consecutive(rows, return_counts=True)
    n, m, k = par.numel(), rows.numel(), int(counts.max())
    if n * k > m + m // 2:
        return None
    group = torch.arange(n).repeat_interleave(counts)
    slot = torch.arange(m) - (torch.cumsum(counts, 0) - counts).repeat_interleave(counts)
    dev = state.attention_mask.device
    ids = torch.zeros((n, k), dtype=torch.long)
    ids[group, slot] = tokens.cpu()
    cache, att, pos = _parent_cache(state, par)
    mask = torch.zeros((n, 1, 1, att.shape[1]), dtype=lm.dtype, device=dev)
    mask.masked_fill_(~att.bool()[:, None, None, :], torch.finfo(lm.dtype).min)
    with torch.no_grad(), _sibling_mode(lm, cache):
        out = lm.model(input_ids=ids.to(dev), attention_mask=mask, position_ids=pos[:, None].expand(n, k),
                       use_cache=True, **{cache_argument(lm.model): cache})
    if m == n * k:
        return out.logits.view(m, -1)
    return out.logits[group.to(dev), slot.to(dev)]


def sibling_check(lm: CausalLM, state: LMState, rows: torch.Tensor, tokens: torch.Tensor,
                  step_logits) -> bool:
    """Whether ``sibling_logits`` agrees with the one-token step ``step_logits(state, rows, tokens)``
    on the first parents of a chunk (a model that ignores the position ids, attends otherwise
    than through transformers' attention functions, or needs what ``_sibling_attention`` does not
    implement fails here)."""
    head = rows < rows[min(rows.numel(), 8) - 1] + 1  # the rows of the first few parents
    try:
        got = sibling_logits(lm, state, rows[head], tokens[head])
    except (_Declined, RuntimeError, ValueError, TypeError, AttributeError):
        return False
    if got is None:
        return False
    want = step_logits(state, rows[head], tokens[head]).to(got.dtype)
    scale = 1.0 + float(want.abs().max())
    return bool(torch.isfinite(got).all()) and float((got - want).abs().max()) <= _CHECK_TOL * scale
