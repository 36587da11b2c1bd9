"""The walk's last forward: every child of a parent as one query block over the parent's own cache.

At the last depth the walk needs the next-token logits of every prefix of length T - 1, and
each is a parent's cached prefix plus one token. Instead of copying each parent's KV cache to
each of its children (one row per child), the children of a parent go in as the k query
positions of the parent's row, at the same position, each seeing the parent's cache and itself
only (a 4-d attention mask)::

    par, counts = runs of equal rows        # n parents, counts[i] children each, k = max count
    ids  [n, k]   = the children's tokens (padded)
    mask [n, 1, k, L + k] = parent's attention mask | identity      (0 or the dtype's min)
    pos  [n, k]   = the parent's next position
    logits [n, k, V] = model(ids, mask, pos, cache = parent rows' cache)  ->  the children's rows

The numbers are the one-token step's up to float rounding (the same sums; masked keys add
zeros). Used only for ``DynamicCache`` models without a support model, after a check on the
first chunk against the one-token step; otherwise, and for chunks where padding would exceed half
the rows, the walk takes the one-token step.
"""

from __future__ import annotations

import torch

from bayes_rlhf.exact.slots import supports_slots
from bayes_rlhf.models.cache import _fork_cache, cache_argument
from bayes_rlhf.models.causal_lm import CausalLM, LMState

__all__ = ["sibling_logits"]

# relative agreement the first chunk must show with the one-token step (float32 rounding is ~1e-6)
_CHECK_TOL = 1e-4


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
    sub = state.reindex(par.to(dev))  # each parent once
    L = sub.attention_mask.shape[1]
    low = torch.finfo(lm.dtype).min
    mask = torch.full((n, 1, k, L + k), low, dtype=lm.dtype, device=dev)
    mask[:, 0, :, :L].masked_fill_(sub.attention_mask[:, None, :].bool(), 0.0)
    mask[:, 0, :, L:].masked_fill_(torch.eye(k, dtype=torch.bool, device=dev), 0.0)
    pos = sub.positions[:, None].expand(n, k)
    with torch.no_grad():
        out = lm.model(input_ids=ids.to(dev), attention_mask=mask, position_ids=pos, use_cache=True,
                       **{cache_argument(lm.model): _fork_cache(sub.cache)})
    return out.logits[group.to(dev), slot.to(dev)]


def sibling_check(lm: CausalLM, state: LMState, rows: torch.Tensor, tokens: torch.Tensor,
                  step_logits) -> bool:
    """Whether ``sibling_logits`` agrees with the one-token step ``step_logits(state, rows, tokens)``
    on the first parents of a chunk (a model that ignores 4-d masks or position ids fails here)."""
    head = rows < rows[min(rows.numel(), 8) - 1] + 1  # the rows of the first few parents
    got = sibling_logits(lm, state, rows[head], tokens[head])
    if got is None:
        return False
    want = step_logits(state, rows[head], tokens[head]).to(got.dtype)
    scale = 1.0 + float(want.abs().max())
    return bool(torch.isfinite(got).all()) and float((got - want).abs().max()) <= _CHECK_TOL * scale
