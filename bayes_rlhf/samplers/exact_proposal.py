"""The exact proposal q(x_t | x_<t) = pi*(x_t | x_<t) from enumerated posteriors, all live particles at once."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from bayes_rlhf.errors import ConfigError, TokenizerMismatchError
from bayes_rlhf.exact.matching import check_table_support
from bayes_rlhf.exact.posterior import ExactPosterior
from bayes_rlhf.samplers.proposal_protocol import Proposed, StepView
from bayes_rlhf.samplers.twists import lookup, posterior_table
from bayes_rlhf.target import Target


@dataclass(frozen=True)
class Blocks:
    """``ExactProposal``'s per-particle state: rows [lo, hi) of its prompt's sorted table that extend its prefix."""

    lo: torch.Tensor     # LongTensor [n]
    hi: torch.Tensor     # LongTensor [n]
    table: torch.Tensor  # LongTensor [n], which prompt's table


class ExactProposal:
    """q(x_t | x_<t) = pi*(x_t | x_<t) from exact posteriors (one per prompt), all live particles at once.

    The completions extending a prefix are one block of the sorted table, and within it those
    extending prefix + v are one sub-block: a particle's state is its block, and one pass over the
    distinct blocks of a step (at most the whole table) gives every live particle's next-token
    posterior and the sub-block of each token.
    """

    lm = None
    lookahead = False

    def __init__(self, posteriors, target: Target, prompts: Sequence[str]):
        table = posterior_table(posteriors)
        self.tables = [lookup(table, p, "proposal") for p in prompts]
        for post in self.tables:
            if not post.vocabulary.same_as(target.prior.vocabulary):
                raise TokenizerMismatchError("the proposal posterior's tokenizer differs from the prior's")
            if post.completion_ids.shape[1] != target.max_new_tokens:
                raise ConfigError(f"the proposal posterior has max_new_tokens={post.completion_ids.shape[1]}, "
                                  f"the target {target.max_new_tokens}; enumerate it from the same target")
            check_table_support(post, target, "the proposal's posterior")
        self.vocab_size = target.prior.vocab_size

    def start(self, num_particles: int) -> Blocks:
        sizes = torch.tensor([post.num_completions for post in self.tables])
        hi = sizes.repeat_interleave(num_particles)
        return Blocks(torch.zeros_like(hi), hi, torch.arange(len(self.tables)).repeat_interleave(num_particles))

    def log_probs(self, state: Blocks, view: StepView) -> Proposed:
        a, V = view.live.numel(), self.vocab_size
        logq = torch.full((a, V), -math.inf, dtype=torch.float64)
        child = torch.zeros((2, a, V), dtype=torch.long)
        tables = state.table[view.live]
        for p in torch.unique(tables).tolist():
            sel = torch.nonzero(tables == p).squeeze(-1)
            parts = view.live[sel]
            logq[sel], child[:, sel] = _next_tokens(self.tables[p], state.lo[parts], state.hi[parts], view.t, V)
        return Proposed(logq.to(view.prior_logp.device), extra=child)

    def advance(self, state: Blocks, view: StepView, tokens: torch.Tensor, proposed: Proposed) -> Blocks:
        child, rows = proposed.extra, torch.arange(tokens.numel())
        lo, hi = state.lo.clone(), state.hi.clone()
        lo[view.live], hi[view.live] = child[0, rows, tokens], child[1, rows, tokens]
        return Blocks(lo, hi, state.table)

    def reindex(self, state: Blocks, idx: torch.Tensor) -> Blocks:
        return Blocks(state.lo[idx], state.hi[idx], state.table[idx])


def _next_tokens(post: ExactPosterior, lo: torch.Tensor, hi: torch.Tensor, t: int,
                 V: int) -> tuple[torch.Tensor, torch.Tensor]:
    """pi*(. | prefix) as log-probs [k, V] for k blocks [lo, hi) of prefixes of length t, and the
    sub-block [lo, hi) of each next token, LongTensor [2, k, V] (0, 0 where the token has no row)."""
    ulo, inv = torch.unique(lo, return_inverse=True)        # blocks at one depth are disjoint: lo names one
    uhi = torch.zeros_like(ulo).scatter_(0, inv, hi)
    sizes = uhi - ulo
    seg = torch.repeat_interleave(torch.arange(ulo.numel()), sizes)
    offsets = torch.cumsum(sizes, 0) - sizes
    pos = torch.arange(int(sizes.sum())) + (ulo - offsets)[seg]   # every table row of every block
    lp, key = post.log_probs[pos], seg * V + post.completion_ids[pos, t]
    m = torch.full((ulo.numel(),), -math.inf, dtype=torch.float64).scatter_reduce(0, seg, lp, "amax")
    mass = torch.zeros(ulo.numel() * V, dtype=torch.float64).index_add_(0, key, (lp - m[seg]).exp()).view(-1, V)
    logq = (mass / mass.sum(-1, keepdim=True)).log()
    first = torch.zeros(ulo.numel() * V, dtype=torch.long).scatter_reduce(0, key, pos, "amin", include_self=False)
    last = torch.zeros(ulo.numel() * V, dtype=torch.long).scatter_reduce(0, key, pos + 1, "amax", include_self=False)
    return logq[inv], torch.stack([first.view(-1, V), last.view(-1, V)])[:, inv]
