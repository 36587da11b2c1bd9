"""SMC's model states for the live particles only: compact KV-cache rows and a particle -> row map.

The n = P * N particles keep their own order (ids, weights, resampling are per particle); the
prior's state (and the proposal LM's, if any) holds m <= n rows, and ``row[i]`` says which
row particle i continues (-1: none, the particle has finished and its row was dropped)::

    rows = LiveRows.start(prior, proposal, prompts, N)    # m = n, row[i] = i
    # each token, with `going` [n] the particles that continue:
    if m - going.sum() > compact_threshold * m:           # too many finished rows
        rows = rows.compact(going)                        # one KV copy: only going rows remain
    rows = rows.step(prior, proposal, tokens, going)      # one forward over the m rows
    rows = rows.resample(idx, keep)                       # child j takes parent idx[j]'s row

Stale rows (particles that finished but whose row was not dropped yet) are stepped with the
pad token and ignored; their cost is bounded by the threshold. Rows are copied only by
``LMState.reindex`` (compaction or resampling), never recomputed from the prompt; a step writes one
position into buffers with room for the run (``_kv_room``), it does not copy the cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from bayes_rlhf.models.causal_lm import CausalLM, LMState
from bayes_rlhf.samplers._kv_room import with_room


@dataclass(frozen=True)
class LiveRows:
    """Model states over m rows and the map from n particles to them. Never mutated.

    Attributes
    ----------
    prior_state : LMState
        The prior's KV cache, m rows.
    prior_logp : Tensor [m, V]
        The prior's next-token log-probs of each row (on the model's device).
    proposal_state, proposal_logp : LMState, Tensor [m, V] or None
        The same for a CausalLM proposal (rows aligned with the prior's).
    row : LongTensor [n]
        State row of each particle (CPU); -1 where the particle has no row.
    """

    prior_state: LMState
    prior_logp: torch.Tensor
    proposal_state: LMState | None
    proposal_logp: torch.Tensor | None
    row: torch.Tensor

    @classmethod
    def start(cls, prior: CausalLM, proposal: CausalLM | None, prompts: Sequence[str], N: int,
              room: int = 0) -> "LiveRows":
        """Run every prompt once and repeat its cache to N rows (particle i in row i).

        ``room``: tokens that may follow; the KV rows get buffers that long, so a step writes one
        position instead of copying the cache (``_kv_room``; 0: transformers' concatenating cache).
        """
        state, logp = prior.start(prompts, N)
        state = with_room(state, room)
        q_state = q_logp = None
        if proposal is not None:
            q_state, q_logp = proposal.start(prompts, N)
            q_state = with_room(q_state, room)
        return cls(state, logp, q_state, q_logp, torch.arange(state.batch_size))

    @property
    def num_rows(self) -> int:
        """m, the rows each model step runs."""
        return self.prior_state.batch_size

    def logp(self, particles: torch.Tensor, proposal: bool = False) -> torch.Tensor:
        """Next-token log-probs [k, V] of ``particles`` [k] (each must have a row)."""
        rows = self.row[particles]
        if bool((rows < 0).any()):
            raise RuntimeError("a particle without a model row was asked for its next-token log-probs")
        lp = self.proposal_logp if proposal else self.prior_logp
        return lp[rows.to(lp.device)]

    def per_particle(self, proposal: bool = False) -> torch.Tensor | None:
        """Log-probs [n, V] by particle (NaN where a particle has no row), or None without a proposal."""
        lp = self.proposal_logp if proposal else self.prior_logp
        if lp is None:
            return None
        has = self.row >= 0
        out = lp[self.row.clamp(min=0).to(lp.device)]
        return out.masked_fill(~has.to(lp.device)[:, None], float("nan"))

    def _take(self, rows: torch.Tensor, new_row: torch.Tensor) -> "LiveRows":
        """A state of rows ``rows`` [k] of this one (repeats allowed) with the particle map ``new_row``."""
        dev = self.prior_logp.device
        q_state = self.proposal_state.reindex(rows) if self.proposal_state is not None else None
        q_logp = self.proposal_logp[rows.to(self.proposal_logp.device)] if self.proposal_logp is not None else None
        return LiveRows(self.prior_state.reindex(rows), self.prior_logp[rows.to(dev)], q_state, q_logp, new_row)

    def compact(self, keep: torch.Tensor) -> "LiveRows":
        """Only the rows of the particles where ``keep`` [n] is True (each must have a row), in particle order."""
        particles = torch.nonzero(keep).squeeze(-1)
        new_row = torch.full_like(self.row, -1)
        new_row[particles] = torch.arange(particles.numel())
        return self._take(self.row[particles], new_row)

    def resample(self, idx: torch.Tensor, keep: torch.Tensor) -> "LiveRows":
        """Particle j becomes a copy of particle ``idx[j]``; rows only for the children where ``keep`` [n].

        Every kept child's parent must have a row.
        """
        children = torch.nonzero(keep).squeeze(-1)
        rows = self.row[idx[children]]
        if bool((rows < 0).any()):
            raise RuntimeError("resampling kept a child whose parent has no model row")
        new_row = torch.full_like(self.row, -1)
        new_row[children] = torch.arange(children.numel())
        return self._take(rows, new_row)

    def step(self, prior: CausalLM, proposal: CausalLM | None, tokens: torch.Tensor,
             stepping: torch.Tensor, pad_id: int) -> "LiveRows":
        """Append ``tokens[i]`` [n] to the row of each particle with ``stepping[i]``; other rows get pad."""
        has = stepping & (self.row >= 0)
        tok_rows = torch.full((self.num_rows,), pad_id, dtype=torch.long)
        tok_rows[self.row[has]] = tokens[has]
        state, logp = prior.step(self.prior_state, tok_rows)
        q_state = q_logp = None
        if proposal is not None:
            q_state, q_logp = proposal.step(self.proposal_state, tok_rows)
        return LiveRows(state, logp, q_state, q_logp, self.row)
