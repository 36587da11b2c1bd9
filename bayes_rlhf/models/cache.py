"""The KV-cache state of n partial sequences and one cached forward of any transformers causal LM.

    state.reindex(idx)          rows idx of the cache (repeats allowed), no recomputation
    forward_with_cache(model, ids, att, pos, cache) -> (last-position logits [n, V], new cache)

The cache is passed under the argument name the installed transformers takes (``cache`` from
5.24, ``past_key_values`` before; the old name is removed in 5.40), read once per model class, and
``logits_to_keep=1`` where the model takes it: a prompt pass computes the LM head at its last
position only (SmolLM2, 18 prompt positions: the 49,152 x 576 head once instead of 18 times).
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import torch


def _select_cache(cache, idx: torch.Tensor):
    """A new cache holding rows ``idx`` of ``cache``; the input cache is left untouched."""
    new = copy.copy(cache)
    new.layers = [copy.copy(layer) for layer in cache.layers]
    new.reorder_cache(idx)
    return new


def _fork_cache(cache):
    """A shallow copy that a forward pass may extend without changing ``cache``."""
    new = copy.copy(cache)
    new.layers = [copy.copy(layer) for layer in cache.layers]
    return new


@dataclass(frozen=True)
class LMState:
    """The state of n partial sequences: KV cache, attention mask [n, L], next positions [n].

    ``support`` is the support model's state for the same rows when the model's distributions are
    restricted to another model's top-k support (see ``CausalLM(support=...)``), else None.
    """

    cache: object
    attention_mask: torch.Tensor
    positions: torch.Tensor
    support: "LMState | None" = None

    @property
    def batch_size(self) -> int:
        return self.attention_mask.shape[0]

    def reindex(self, idx: torch.Tensor) -> "LMState":
        """Rows ``idx`` (LongTensor [m], repeats allowed) as a new state; no recomputation."""
        idx = idx.to(self.attention_mask.device)
        support = None if self.support is None else self.support.reindex(idx)
        return LMState(_select_cache(self.cache, idx), self.attention_mask[idx], self.positions[idx], support)


def cache_argument(model) -> str:
    """The name under which ``model``'s forward takes a KV cache: ``cache`` (transformers >= 5.24)
    or ``past_key_values`` (older 5.x, removed in 5.40). Read once from the forward's signature."""
    return _forward_facts(model)[0]


def _forward_facts(model) -> tuple[str, bool]:
    """(cache argument name, whether the forward takes ``logits_to_keep``) of ``model``, or of the
    model a peft / DDP wrapper holds; read once per forward from its signature."""
    forward = type(model).forward
    facts = _FORWARD_FACTS.get(forward)
    if facts is None:
        inner = model
        while True:  # peft and DDP wrappers take **kwargs: read the wrapped model's signature
            if hasattr(inner, "get_base_model"):
                inner = inner.get_base_model()
            elif isinstance(getattr(inner, "module", None), torch.nn.Module):
                inner = inner.module
            else:
                break
        params = inspect.signature(type(inner).forward).parameters
        facts = ("cache" if "cache" in params else "past_key_values", "logits_to_keep" in params)
        _FORWARD_FACTS[forward] = facts
    return facts


_FORWARD_FACTS: dict = {}


def forward_with_cache(model, input_ids, attention_mask, position_ids, cache=None):
    """One cached forward of any transformers causal LM: last-position logits [n, V] and the cache.

    Passes the cache under the argument name the installed transformers supports (see
    ``cache_argument``) and reads it back from the output under either name.
    """
    name, takes_keep = _forward_facts(model)
    extra = {"logits_to_keep": 1} if takes_keep and input_ids.shape[-1] > 1 else {}
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                use_cache=True, **{name: cache}, **extra)
    new_cache = out["cache"] if "cache" in out else out["past_key_values"]
    return out.logits[:, -1], new_cache
