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
    offset: int = 0


@dataclass
class Leaves:
    """Accumulated leaves: ids [K, T] (padded), mask [K, T], log-probs [K] (float64)."""

    T: int
    pad_id: int
    ids: list = field(default_factory=list)
    mask: list = field(default_factory=list)
    log_probs: list = field(default_factory=list)

    def add(self, prefix: torch.Tensor, tokens: torch.Tensor, lp: torch.Tensor) -> None:
        m, d = prefix.shape[0], prefix.shape[1] + 1
        ids = torch.full((m, self.T), self.pad_id, dtype=torch.long)
        ids[:, : d - 1] = prefix
        ids[:, d - 1] = tokens
        mask = torch.zeros((m, self.T), dtype=torch.bool)
        mask[:, :d] = True
        self.ids.append(ids)
        self.mask.append(mask)
        self.log_probs.append(lp)

    def tensors(self):
        if not self.ids:
            raise SpaceTooLargeError("the prior gives no completion positive probability")
        return torch.cat(self.ids), torch.cat(self.mask), torch.cat(self.log_probs)


def _expand(lm: CausalLM, depth: int, T: int, state: LMState, logp: torch.Tensor, prefix: torch.Tensor,
            prefix_lp: torch.Tensor, leaves: Leaves) -> _Node | None:
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
        leaves.add(prefix[rows], toks, child_lp[rows, toks])
    rows, toks = torch.nonzero(finite & ~ends, as_tuple=True)
    if rows.numel() == 0:
        return None
    return _Node(depth, state, rows, toks, prefix, prefix_lp, logp)


def enumerate_completions(lm: CausalLM, prompt: str, T: int, batch_size: int = 2048,
                          max_completions: int = DEFAULT_MAX_COMPLETIONS, progress: bool = False):
    """Every completion of ``prompt`` with positive prior probability, and its log-probability.

    Returns ``(ids [K, T], mask [K, T], log_probs [K])`` sorted lexicographically by token id
    (a completion that ended comes before its extensions), log-probs in float64 on CPU.
    """
    _, internal = check_space(lm, T, max_completions)
    leaves = Leaves(T, lm.pad_id)
    state, logp = lm.start(prompt)
    root = _expand(lm, 0, T, state, logp, torch.zeros((1, 0), dtype=torch.long),
                   torch.zeros(1, dtype=torch.float64), leaves)
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
        child = _expand(lm, node.depth + 1, T, child_state, child_logp, prefix, prefix_lp, leaves)
        bar.update(rows.numel())
        if child is not None:
            stack.append(child)
    bar.close()
    ids, mask, lp = leaves.tensors()
    order = lexicographic_order(ids, mask, lm.vocab_size)
    return ids[order], mask[order], lp[order]


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
