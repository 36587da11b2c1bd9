"""Enumerate every completion of a prompt by walking the prefix tree over a re-indexed KV cache.

Pseudocode (depth-first over chunks of at most B prefixes, B chosen so that the stack's KV
caches fit ``memory_budget``, see ``budget.py``)::

    state, logp = lm.start(prompt)                   # one forward for the prompt
    push expand(root)
    while stack:
        node = top of stack                           # popped when its last chunk is taken
        take the next <= B (row, token) children of node that do not end
        state', logits = forward(node.state.reindex(rows), tokens)   # one batched forward
        push expand(new node)

    expand(node): the kept next tokens of each row (top-k indices and values of the logits,
        or the whole vocabulary), their log-probs from those values alone; emit the children
        that end (EOS, or length T) as leaves; keep the others as the node's children

Each internal prefix is run through the model exactly once, one token at a time, and each
leaf's log-probability is the sum of the per-step log-probs along its path. With top-k, a
step touches the vocabulary only in the model's last layer and one ``topk``; everything after
works on the k kept entries.

Two copies are saved per step (same numbers, up to float rounding): ``reindex`` gathers the
rows into buffers with a free slot for the next token, so the forward does not concatenate
(``slots.py``); and the last forward (prefixes of length T - 1, most of the tree) runs the
children of each parent as one block of query positions over the parent's own row, each child
attending to the parent's keys and its own (``siblings.py``), instead of copying the parent's cache
to every child.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from bayes_rlhf.errors import ConfigError, SpaceTooLargeError
from bayes_rlhf.exact.budget import (DEFAULT_MEMORY_BUDGET, available_memory, config_cache_bytes, gib,
                                     plan_batch, state_cache_bytes, table_bytes, walk_bytes)
from bayes_rlhf.exact.leaves import Leaves, lexicographic_order
from bayes_rlhf.exact.siblings import sibling_check, sibling_logits
from bayes_rlhf.exact.slots import slot_reindex
from bayes_rlhf.models.causal_lm import CausalLM, LMState

__all__ = ["enumerate_completions", "count_completions", "check_space", "kept_tokens", "lexicographic_order",
           "DEFAULT_MAX_COMPLETIONS", "DEFAULT_MEMORY_BUDGET", "Leaves"]

# None: the size guard compares the table's bytes with the memory available (see check_space)
DEFAULT_MAX_COMPLETIONS: int | None = None
# the last forward runs each parent's children as one query block over its row (siblings.py)
SIBLING_STEP = True


def count_completions(branching: int, T: int, has_eos: bool) -> tuple[int, int]:
    """(leaves, internal prefixes) of a full tree with ``branching`` tokens per step.

    With an EOS among them, a completion ends at EOS (b-1 ways to continue) or at length T.
    Internal prefixes include the empty one (the prompt). Returns upper bounds when some
    tokens have zero probability.
    """
    b = branching - 1 if has_eos else branching
    leaves = sum(b ** (t - 1) for t in range(1, T + 1)) if has_eos else 0
    leaves += b ** T
    internal = sum(b ** t for t in range(0, T))
    return leaves, internal


# 10^15 completions: a table of int64 ids alone would need petabytes
_LOG10_FAR_TOO_MANY = 15.0


def _branching(lm: CausalLM) -> int:
    return min(lm.top_k or lm.vocab_size, lm.vocab_size)


def check_space(lm: CausalLM, T: int, max_completions: int | None = DEFAULT_MAX_COMPLETIONS, *,
                memory_budget: int = DEFAULT_MEMORY_BUDGET, batch_size: int = 2048,
                prompt_len: int = 16) -> tuple[int, int]:
    """Refuse, before any work, a space whose table would not fit in memory.

    With ``max_completions=None`` the estimate of the bytes needed (the table and the posterior
    built from it, ``budget.table_bytes``, or the walk's caches if larger) is compared with the
    memory available now; an explicit ``max_completions`` replaces that by a count. Returns
    (upper bound on the completions, upper bound on the internal prefixes).
    """
    branching = _branching(lm)
    hint = ("Lower max_new_tokens, truncate the prior with top_k (load_model(..., top_k=k))")
    # before any exact count: b^T for a large T is a huge integer (slow to build, too long to print)
    log10_leaves = T * math.log10(branching) if branching > 1 else 0.0
    if log10_leaves > max(_LOG10_FAR_TOO_MANY, math.log10(max(max_completions or 1, 1))):
        raise SpaceTooLargeError(
            f"the completion space has about 10^{log10_leaves:,.0f} completions ({branching} tokens per step, "
            f"max_new_tokens={T}), far more than any table could hold. {hint}.")
    # with top-k truncation EOS may fall outside the k kept tokens: bound by k^T leaves
    exact_count = branching == lm.vocab_size and lm.eos_token_id is not None
    leaves, internal = count_completions(branching, T, exact_count)
    if max_completions is not None:
        if leaves > max_completions:
            raise SpaceTooLargeError(
                f"the completion space has up to {leaves:,} completions ({branching} tokens per step, "
                f"max_new_tokens={T}), more than max_completions={max_completions:,}. {hint}, or raise "
                "max_completions if memory allows (see bayes_rlhf.exact.budget.table_bytes).")
        return leaves, internal
    cache = config_cache_bytes(lm)
    walk = memory_budget if cache is None else min(memory_budget, walk_bytes(
        batch_size, T, cache, prompt_len, 4 * lm.vocab_size, [branching ** d for d in range(T)]))
    need = max(table_bytes(leaves, T), walk + 32 * leaves)
    avail = available_memory()
    if need > avail:
        raise SpaceTooLargeError(
            f"the completion space has up to {leaves:,} completions ({branching} tokens per step, "
            f"max_new_tokens={T}); its table needs about {gib(need)} of memory and {gib(avail)} is "
            f"available. {hint}, free memory, or pass max_completions=N to set the limit yourself.")
    return leaves, internal


def kept_tokens(lm: CausalLM, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The next tokens the (truncated) prior keeps, row by row, and their log-probs.

    ``logits`` [n, V] (log-probs work too: the result is shift-invariant). With ``lm.top_k = k``
    only the k largest entries per row are used (``topk`` indices and values, renormalised in
    float64), and a row whose k-th and (k+1)-th values tie keeps every tied token, as
    ``CausalLM.log_softmax`` does; without, the whole row is normalised in the logits' precision
    (float32 at least), as ``CausalLM.log_softmax`` does. Returns rows [m], tokens [m], log-probs [m] (float64), on
    CPU, ordered by row then token id; tokens of probability zero are left out.
    """
    rows, toks, lp = _kept(lm, logits)
    return _flatten(lp, toks) if rows is None else (rows, toks, lp)


def _kept(lm: CausalLM, logits: torch.Tensor):
    """``kept_tokens``, with the common case left dense: (None, tokens [n, k], log-probs [n, k])
    when every row keeps k tokens (no zeros, no ties at the k-th value), else flat (rows, tokens, lp)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    n, V = logits.shape
    k = lm.top_k
    if k is None or k >= V:  # the whole vocabulary, in the model's precision as CausalLM.log_softmax
        lp = torch.log_softmax(logits, dim=-1).double().cpu()
        return _dense_or_flat(lp, torch.arange(V).expand(n, V))
    vals, toks = torch.topk(logits, k + 1, dim=-1)
    tie = (vals[:, k] == vals[:, k - 1]).cpu()
    kth = vals[:, k - 1]
    toks, order = toks[:, :k].sort(dim=-1)
    vals = vals[:, :k].gather(-1, order).double()
    lp = (vals - torch.logsumexp(vals, dim=-1, keepdim=True)).cpu()
    if not bool(tie.any()):
        return _dense_or_flat(lp, toks.cpu())
    rows, toks, lp = _flatten(lp, toks.cpu())
    keep = ~tie[rows]  # rows with a tie at the k-th value: every token >= the k-th value, densely
    tied = torch.nonzero(tie).squeeze(-1)
    sub = logits[tied.to(logits.device)].double()
    dense = torch.log_softmax(sub.masked_fill(sub < kth[tied.to(kth.device), None].double(), float("-inf")), -1)
    r, t, l = _flatten(dense.cpu(), torch.arange(V).expand(tied.numel(), V))
    rows, toks, lp = torch.cat([rows[keep], tied[r]]), torch.cat([toks[keep], t]), torch.cat([lp[keep], l])
    order = torch.argsort(rows * V + toks)
    return rows[order], toks[order], lp[order]


def _dense_or_flat(lp: torch.Tensor, toks: torch.Tensor):
    """(None, toks, lp) when every entry of lp [n, k] is finite, else ``_flatten``'s rows, tokens, lp."""
    if math.isfinite(float(lp.sum())):  # log-probs are <= 0: the sum is finite iff every entry is
        return None, toks, lp
    return _flatten(lp, toks)


def _flatten(lp: torch.Tensor, toks: torch.Tensor):
    """(rows, tokens, log-probs) of the finite entries of lp [n, k] with token ids toks [n, k]."""
    if math.isfinite(float(lp.sum())):
        n, k = lp.shape
        return torch.arange(n).repeat_interleave(k), toks.reshape(-1), lp.reshape(-1)
    rows, cols = torch.nonzero(torch.isfinite(lp), as_tuple=True)
    return rows, toks[rows, cols], lp[rows, cols]


@dataclass
class _Node:
    depth: int
    state: LMState | None    # KV cache of the node's n rows
    prefix: torch.Tensor     # [n, depth] prefix ids of the node's rows
    key: torch.Tensor | None  # [n] int64 lexicographic key of each prefix (None: too long for int64)
    rows: torch.Tensor       # [m] row of each continuing child
    tokens: torch.Tensor     # [m] token of each continuing child
    child_lp: torch.Tensor   # [m] float64 log-prob of each continuing child's prefix
    offset: int = 0


def _expand(lm: CausalLM, depth: int, T: int, state: LMState | None, logits: torch.Tensor,
            prefix: torch.Tensor, prefix_lp: torch.Tensor, key: torch.Tensor | None,
            leaves: Leaves) -> _Node | None:
    """Emit the ending children of a node as leaves; return the node if some children continue."""
    rows, toks, lp = _kept(lm, logits)
    if depth + 1 == T:  # every child is a leaf: dense chunks stay dense ([n, k], no row index)
        leaves.add(prefix, rows, toks, prefix_lp[:, None] + lp if rows is None else prefix_lp[rows] + lp, key)
        return None
    if rows is None:
        rows, toks, lp = _flatten(lp, toks)
    child_lp = prefix_lp[rows] + lp
    if lm.eos_token_id is not None:
        ends = toks == lm.eos_token_id
        if bool(ends.any()):
            leaves.add(prefix, rows[ends], toks[ends], child_lp[ends], key)
            go = ~ends
            rows, toks, child_lp = rows[go], toks[go], child_lp[go]
    if rows.numel() == 0:
        return None
    return _Node(depth, state, prefix, key, rows, toks, child_lp)


def _step(lm: CausalLM, state: LMState, tokens: torch.Tensor) -> tuple[LMState, torch.Tensor]:
    """One token per row; returns the new state and the raw logits [n, V].

    Like ``CausalLM.step`` but without the log-softmax over the vocabulary, and it extends
    ``state``'s cache in place (the walk passes a freshly re-indexed state it owns). A model
    restricted to another's support (``lm.support``) takes ``CausalLM.step``, whose log-probs
    are masked to the support's top-k sets (``kept_tokens`` reads log-probs as logits).
    """
    if lm.support is not None:
        return lm.step(state, tokens)
    tokens = tokens.to(lm.device).view(-1, 1)
    att = torch.cat([state.attention_mask, state.attention_mask.new_ones(tokens.shape[0], 1)], dim=1)
    with torch.no_grad():
        logits, cache = lm._forward(tokens, att, state.positions.view(-1, 1), state.cache)
    return LMState(cache, att, state.positions + 1), logits


def walk_batch_size(lm: CausalLM, state: LMState, T: int, batch_size: int, memory_budget: int) -> int:
    """Rows per forward of the walk from the prompt's state (see ``budget.plan_batch``)."""
    return plan_batch(batch_size, memory_budget, T, state_cache_bytes(state), state.attention_mask.shape[1],
                      lm.vocab_size * max(4, lm.dtype.itemsize), _branching(lm))


def enumerate_completions(lm: CausalLM, prompt: str, T: int, batch_size: int = 2048,
                          max_completions: int | None = DEFAULT_MAX_COMPLETIONS, progress: bool = False,
                          memory_budget: int = DEFAULT_MEMORY_BUDGET):
    """Every completion of ``prompt`` with positive prior probability, and its log-probability.

    Parameters
    ----------
    batch_size : int
        At most this many prefixes per forward pass.
    max_completions : int, optional
        Refuse spaces with more completions; by default (None) refuse those whose table would
        not fit in the memory available (``check_space``).
    memory_budget : int
        Bytes for the walk's KV caches and logits; fewer rows per forward when they would not fit.

    Returns ``(ids [K, T], mask [K, T], log_probs [K])`` sorted lexicographically by token id
    (a completion that ended comes before its extensions), log-probs in float64 on CPU.
    """
    if batch_size < 1 or memory_budget < 1:
        raise ConfigError(f"batch_size and memory_budget must be >= 1, got {batch_size}, {memory_budget}")
    prompt_len = len(lm.encode_prompt(prompt))
    _, internal = check_space(lm, T, max_completions, memory_budget=memory_budget, batch_size=batch_size,
                              prompt_len=prompt_len)
    leaves = Leaves(T, lm.pad_id, lm.vocab_size + 1)
    state, logp = lm.start(prompt)
    B = walk_batch_size(lm, state, T, batch_size, memory_budget)
    key = torch.zeros(1, dtype=torch.long) if leaves.keyed else None
    root = _expand(lm, 0, T, state, logp, torch.zeros((1, 0), dtype=torch.long),
                   torch.zeros(1, dtype=torch.float64), key, leaves)
    stack = [root] if root is not None else []
    siblings = None if SIBLING_STEP else False  # None: not checked yet
    bar = tqdm(total=internal, desc="enumerating prefixes", unit="prefix", disable=not progress)
    bar.update(1)  # the prompt, the tree's root
    while stack:
        node = stack[-1]
        s = node.offset
        node.offset += B
        rows, toks = node.rows[s: s + B], node.tokens[s: s + B]
        state = node.state
        if node.offset >= node.rows.numel():  # last chunk: the node's own cache can go after it
            stack.pop()
            node.state = None
        depth = node.depth + 1
        logits = child_state = None
        if depth + 1 == T and siblings is not False:  # the last forward: siblings share their parent's row
            if siblings is None:  # once, on the first chunk: does it agree with the one-token step?
                siblings = sibling_check(lm, state, rows, toks, lambda st, r, t: _step(lm, st.reindex(r), t)[1])
            logits = sibling_logits(lm, state, rows, toks) if siblings else None
        if logits is None:
            chunk_state = slot_reindex(state, rows)  # the step writes its token into a free slot
            if chunk_state is None:
                chunk_state = state.reindex(rows)
            del state
            child_state, logits = _step(lm, chunk_state, toks)
            del chunk_state
        else:
            del state
        if depth + 1 == T:  # a last-depth node only emits leaves: drop its cache before the next forward
            child_state = None
        prefix = torch.cat([node.prefix[rows], toks[:, None]], dim=1)
        key = None if node.key is None else node.key[rows] * leaves.base + toks + 1
        child = _expand(lm, depth, T, child_state, logits, prefix,
                        node.child_lp[s: s + B], key, leaves)
        bar.update(rows.numel())
        if child is not None:
            stack.append(child)
    if bar.total != bar.n:  # the count is an upper bound when the tree is smaller (top-k, zeros)
        bar.total = bar.n
        bar.refresh()
    bar.close()
    return leaves.tensors()
