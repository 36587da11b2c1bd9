"""Enumerate every completion of a prompt by walking the prefix tree over a re-indexed KV cache.

Pseudocode (depth-first over chunks of at most ``batch_size`` prefixes, so memory is bounded
by ``T * batch_size`` cached rows whatever the size of the tree)::

    state, logp = lm.start(prompt)                   # one forward for the prompt
    push node(prefixes=[()], state, logp)
    while stack:
        node = top of stack
        take the next <= batch_size (prefix, token) children of node that do not end
        child_state = lm.step(node.state.reindex(parent_rows), tokens)   # one batched forward
        emit the children of the new node that end (EOS, or length T) as leaves
        push the new node if it has children that continue

Each internal prefix is run through the model exactly once, one token at a time, and each
leaf's log-probability is the sum of the per-step log-probs along its path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from bayes_rlhf.errors import SpaceTooLargeError
from bayes_rlhf.models.causal_lm import CausalLM, LMState

DEFAULT_MAX_COMPLETIONS = 1 << 22


def count_completions(branching: int, T: int, has_eos: bool) -> tuple[int, int]:
    """(leaves, internal prefixes) of a full tree with ``branching`` tokens per step.

    With an EOS among them, a completion ends at EOS (b-1 ways to continue) or at length T.
    Returns upper bounds when some tokens have zero probability.
    """
    b = branching - 1 if has_eos else branching
    leaves = sum(b ** (t - 1) for t in range(1, T + 1)) if has_eos else 0
    leaves += b ** T
    internal = sum(b ** t for t in range(0, T))
    return leaves, internal


def check_space(lm: CausalLM, T: int, max_completions: int) -> tuple[int, int]:
    """Refuse, before any work, a space with more than ``max_completions`` completions."""
    branching = min(lm.top_k or lm.vocab_size, lm.vocab_size)
    # with top-k truncation EOS may fall outside the k kept tokens: bound by k^T leaves
    exact_count = branching == lm.vocab_size and lm.eos_token_id is not None
    leaves, internal = count_completions(branching, T, exact_count)
    if leaves > max_completions:
        raise SpaceTooLargeError(
            f"the completion space has up to {leaves:,} completions ({branching} tokens per step, "
            f"max_new_tokens={T}), more than max_completions={max_completions:,}. Lower "
            "max_new_tokens, truncate the prior with top_k (load_model(..., top_k=k)), or raise "
            "max_completions if memory allows (about 100 bytes per completion).")
    return leaves, internal


@dataclass
class _Node:
    depth: int
    state: LMState
    rows: torch.Tensor      # [m] parent row of each continuing child
    tokens: torch.Tensor    # [m] token of each continuing child
    prefix: torch.Tensor    # [n, depth] prefix ids of the node's rows
    prefix_lp: torch.Tensor  # [n] float64 log-prob of each prefix
    logp: torch.Tensor      # [n, V] float64 next-token log-probs of each row
    key: torch.Tensor | None  # [n] int64 lexicographic key of each prefix (None: too long for int64)
    offset: int = 0


@dataclass
class Leaves:
    """Leaves accumulated chunk by chunk, assembled once, in lexicographic order, by ``tensors``.

    Each leaf carries an integer key (its tokens + 1 as digits in base V + 1, padded with zeros
    on the right) when T digits fit in int64, so ordering them is one argsort of K integers.
    """

    T: int
    pad_id: int
    base: int
    chunks: list = field(default_factory=list)  # (prefix [m, d-1], tokens [m], log-probs [m], keys [m])

    @property
    def keyed(self) -> bool:
        return self.T * self.base.bit_length() < 63

    def add(self, prefix: torch.Tensor, tokens: torch.Tensor, lp: torch.Tensor, key: torch.Tensor | None) -> None:
        if key is not None:
            key = (key * self.base + tokens + 1) * self.base ** (self.T - prefix.shape[1] - 1)
        self.chunks.append((prefix, tokens, lp, key))

    def tensors(self):
        """ids [K, T] (a transposed view of a contiguous [T, K] table), mask [K, T], log-probs [K]."""
        if not self.chunks:
            raise SpaceTooLargeError("the prior gives no completion positive probability")
        lengths = torch.cat([torch.full((t.shape[0],), p.shape[1] + 1, dtype=torch.long)
                             for p, t, _, _ in self.chunks])
        lp = torch.cat([c[2] for c in self.chunks])
        K = lp.shape[0]
        order = _sort_keys(torch.cat([c[3] for c in self.chunks]), lengths == self.T) if self.keyed \
            else torch.arange(K)
        pos = torch.empty(K, dtype=torch.long)
        pos[order] = torch.arange(K)
        cols = torch.empty((self.T, K), dtype=torch.long)
        offset = 0
        for prefix, tokens, _, _ in self.chunks:  # write each leaf straight to its sorted place
            where = pos[offset: offset + tokens.shape[0]]
            d = prefix.shape[1]
            if d:
                cols[:d, where] = prefix.t()
            cols[d, where] = tokens
            if d + 1 < self.T:
                cols[d + 1:, where] = self.pad_id
            offset += tokens.shape[0]
        ids, lengths, lp = cols.t(), lengths[order], lp[order]
        mask = torch.arange(self.T)[None, :] < lengths[:, None]
        if not self.keyed:
            order = lexicographic_order(ids, mask, self.base - 1)
            ids, mask, lp = ids[order], mask[order], lp[order]
        return ids, mask, lp


def _sort_keys(keys: torch.Tensor, full_length: torch.Tensor) -> torch.Tensor:
    """argsort of leaf keys [K], exploiting the walk's order.

    The depth-first walk emits full-length leaves already in lexicographic order; only the leaves
    ended by EOS (emitted when their parent is expanded) are out of place. Sort those alone and
    merge them in; fall back to a full sort if the full-length run is not sorted.
    """
    main = torch.nonzero(full_length).squeeze(-1)
    early = torch.nonzero(~full_length).squeeze(-1)
    main_keys = keys[main]
    if main_keys.numel() > 1 and not bool((main_keys[1:] >= main_keys[:-1]).all()):
        return torch.argsort(keys)
    early_sorted = early[torch.argsort(keys[early])]
    early_pos = torch.searchsorted(main_keys, keys[early_sorted]) + torch.arange(early.numel())
    is_early = torch.zeros(keys.numel(), dtype=torch.bool)
    is_early[early_pos] = True
    order = torch.empty_like(keys)
    order[early_pos] = early_sorted
    order[~is_early] = main
    return order


def _expand(lm: CausalLM, depth: int, T: int, state: LMState, logp: torch.Tensor, prefix: torch.Tensor,
            prefix_lp: torch.Tensor, key: torch.Tensor | None, leaves: Leaves) -> _Node | None:
    """Emit the ending children of a node as leaves; return the node if some children continue."""
    logp = logp.double().cpu()
    finite = torch.isfinite(logp)
    ends = torch.zeros_like(finite)
    if depth + 1 == T:
        ends[:] = True
    elif lm.eos_token_id is not None:
        ends[:, lm.eos_token_id] = True
    child_lp = prefix_lp[:, None] + logp
    rows, toks = torch.nonzero(finite & ends, as_tuple=True)
    if rows.numel():
        leaves.add(prefix[rows], toks, child_lp[rows, toks], None if key is None else key[rows])
    rows, toks = torch.nonzero(finite & ~ends, as_tuple=True)
    if rows.numel() == 0:
        return None
    return _Node(depth, state, rows, toks, prefix, prefix_lp, logp, key)


def enumerate_completions(lm: CausalLM, prompt: str, T: int, batch_size: int = 2048,
                          max_completions: int = DEFAULT_MAX_COMPLETIONS, progress: bool = False):
    """Every completion of ``prompt`` with positive prior probability, and its log-probability.

    Returns ``(ids [K, T], mask [K, T], log_probs [K])`` sorted lexicographically by token id
    (a completion that ended comes before its extensions), log-probs in float64 on CPU.
    """
    _, internal = check_space(lm, T, max_completions)
    leaves = Leaves(T, lm.pad_id, lm.vocab_size + 1)
    state, logp = lm.start(prompt)
    root_key = torch.zeros(1, dtype=torch.long) if leaves.keyed else None
    root = _expand(lm, 0, T, state, logp, torch.zeros((1, 0), dtype=torch.long),
                   torch.zeros(1, dtype=torch.float64), root_key, leaves)
    stack = [root] if root is not None else []
    bar = tqdm(total=internal, desc="enumerating prefixes", unit="prefix", disable=not progress)
    while stack:
        node = stack[-1]
        if node.offset >= node.rows.numel():
            stack.pop()
            continue
        sl = slice(node.offset, node.offset + batch_size)
        node.offset += batch_size
        rows, toks = node.rows[sl], node.tokens[sl]
        child_state, child_logp = lm.step(node.state.reindex(rows), toks)
        prefix = torch.cat([node.prefix[rows], toks[:, None]], dim=1)
        prefix_lp = node.prefix_lp[rows] + node.logp[rows, toks]
        key = None if node.key is None else node.key[rows] * leaves.base + toks + 1
        child = _expand(lm, node.depth + 1, T, child_state, child_logp, prefix, prefix_lp, key, leaves)
        bar.update(rows.numel())
        if child is not None:
            stack.append(child)
    bar.close()
    return leaves.tensors()


def lexicographic_order(ids: torch.Tensor, mask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Permutation sorting completions by token ids, position 0 first; padding sorts first."""
    T = ids.shape[1]
    base = vocab_size + 1
    if T * (base.bit_length()) < 63:  # one integer key per row (Horner), one sort
        key = torch.zeros(ids.shape[0], dtype=torch.long)
        for col in range(T):
            key = key * base + torch.where(mask[:, col], ids[:, col] + 1, 0)
        return torch.argsort(key)
    key_ids = torch.where(mask, ids + 1, torch.zeros_like(ids))
    order = torch.arange(ids.shape[0])
    for col in range(T - 1, -1, -1):  # least significant column first, stable sorts
        order = order[torch.sort(key_ids[order, col], stable=True).indices]
    return order
