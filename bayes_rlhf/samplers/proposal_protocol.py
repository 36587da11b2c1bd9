"""The SMC proposal protocol: what a proposal sees at a step, what it answers, its method set.

A proposal is a plain object with one method set; SMC never looks at its type::

    s = proposal.start(N)                              # its own per-particle state (n = P * N), or None
    out = proposal.log_probs(s, view)                  # Proposed: log q(. | x_<t) [a, V] of the a live particles
    s = proposal.advance(s, view, tokens, out)         # after x_t [a] is drawn
    s = proposal.reindex(s, idx)                       # resampling: particle j continues particle idx[j]
    proposal.lm                                        # a CausalLM SMC steps beside the prior, or None
    proposal.lookahead                                 # True if log q already saw the next potentials

A proposal with an ``lm`` gets its next-token log-probs from ``view.rows`` (SMC keeps that
model's KV-cache rows aligned with the prior's, ``_live_rows``). A lookahead proposal returns the
log potential and reward of every candidate token in ``Proposed`` so that SMC does not evaluate
them twice. The proposals themselves: ``proposals`` (prior, another LM, and ``as_proposal``),
``twisted_proposal``, ``exact_proposal``, ``constrained``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from bayes_rlhf.models.causal_lm import CausalLM
from bayes_rlhf.samplers._live_rows import LiveRows
from bayes_rlhf.samplers.potentials import Potentials


@dataclass(frozen=True)
class StepView:
    """What a proposal sees at step ``t`` (read only).

    Attributes
    ----------
    t : int
        Tokens drawn so far.
    live : LongTensor [a]
        The particles still generating.
    ids : LongTensor [n, T]
        Every particle's tokens (columns < t are drawn).
    prior_logp : Tensor [a, V]
        float64 log pi0(. | x_<t) of the live particles, on the prior's device.
    rows : LiveRows
        The model states (the ``lm`` proposal's next-token log-probs: ``rows.logp(live, proposal=True)``).
    prompts : list of str
        The prompt of each of the n particles.
    potentials : Potentials
        log psi of particle states (``of_candidates`` for every next token).
    log_psi : Tensor [a] or None
        float64 (CPU) current log potential log psi_t(x_{1:t}) of the live particles (0 before the first token).
    allowed : BoolTensor [a, V] or None
        The next tokens a constraint allows (set by ``LocallyConstrained`` for the proposal it wraps);
        None: every token. A proposal may use it to skip work on forbidden tokens.
    """

    t: int
    live: torch.Tensor
    ids: torch.Tensor
    prior_logp: torch.Tensor
    rows: LiveRows
    prompts: list
    potentials: Potentials
    log_psi: torch.Tensor | None = None
    allowed: torch.Tensor | None = None


@dataclass(frozen=True)
class Proposed:
    """A proposal's answer for the live particles.

    ``log_q`` [a, V] float64 on the prior's device, normalised over each row (SMC's weight uses it:
    log pi0 - log q of the drawn token). ``log_psi``, ``rewards`` [a, V] (CPU float64): the potential
    and reward of every candidate token, from a lookahead proposal (None otherwise); NaN in
    ``log_psi`` marks a candidate it did not evaluate, and SMC evaluates it if it is drawn.
    ``dead`` BoolTensor [a] or None: particles the proposal found no allowed token for (their weight
    becomes 0). ``extra``: the proposal's own, handed back to its ``advance``.
    """

    log_q: torch.Tensor
    log_psi: torch.Tensor | None = None
    rewards: torch.Tensor | None = None
    extra: object = None
    dead: torch.Tensor | None = None


@runtime_checkable
class Proposal(Protocol):
    """The method set of an SMC proposal (see the module docstring)."""

    lm: CausalLM | None
    lookahead: bool

    def start(self, num_particles: int) -> object:
        """The per-particle state of n = P * N fresh particles (None if the proposal keeps none)."""

    def log_probs(self, state, view: StepView) -> Proposed:
        """log q(. | x_<t) of the live particles ``view.live``."""

    def advance(self, state, view: StepView, tokens: torch.Tensor, proposed: Proposed) -> object:
        """The state after the live particles drew ``tokens`` [a]."""

    def reindex(self, state, idx: torch.Tensor) -> object:
        """The state after resampling: particle j takes particle ``idx[j]``'s state."""


class Stateless:
    """Base of proposals that keep no per-particle state."""

    lm: CausalLM | None = None
    lookahead = False

    def start(self, num_particles: int) -> None:
        return None

    def advance(self, state, view: StepView, tokens: torch.Tensor, proposed: Proposed) -> None:
        return None

    def reindex(self, state, idx: torch.Tensor) -> None:
        return None
