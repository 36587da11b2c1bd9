"""Proposals for token-level SMC: where each particle's next token comes from.

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
them twice. ``as_proposal`` converts the forms ``smc(proposal=...)`` accepts, once:

    None            PriorProposal      q = pi0 (bootstrap)
    CausalLM        LMProposal         q = another model with the prior's tokenizer
    ExactPosterior  ExactProposal      q = pi*(x_t | x_<t) from the enumerated tables, all particles at once
    "twisted"       TwistedProposal    q ∝ pi0(x_t | x_<t) psi_t(x_{1:t}), the locally optimal proposal
                                       (TwistedProposal(top_p=0.95): the potentials on the head only)
    a Proposal      itself             e.g. LocallyConstrained(mask) (``constrained.py``): forbidden
                                       next tokens masked, the allowed mass in the weight
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import torch

from bayes_rlhf._checks import check_int, is_real
from bayes_rlhf.errors import ConfigError, TokenizerMismatchError
from bayes_rlhf.exact.posterior import ExactPosterior
from bayes_rlhf.models.causal_lm import CausalLM
from bayes_rlhf.samplers._common import check_proposal_lm
from bayes_rlhf.samplers._live_rows import LiveRows
from bayes_rlhf.samplers.potentials import Potentials
from bayes_rlhf.samplers.twists import lookup, posterior_table
from bayes_rlhf.target import Target


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


class _Stateless:
    """Base of proposals that keep no per-particle state."""

    lm: CausalLM | None = None
    lookahead = False

    def start(self, num_particles: int) -> None:
        return None

    def advance(self, state, view: StepView, tokens: torch.Tensor, proposed: Proposed) -> None:
        return None

    def reindex(self, state, idx: torch.Tensor) -> None:
        return None


class PriorProposal(_Stateless):
    """q = pi0: bootstrap SMC (the increment log pi0 - log q is 0)."""

    def log_probs(self, state, view: StepView) -> Proposed:
        return Proposed(view.prior_logp)


class LMProposal(_Stateless):
    """q = a CausalLM sharing the prior's tokenizer, stepped beside the prior on the same rows."""

    def __init__(self, lm: CausalLM):
        self.lm = lm

    def log_probs(self, state, view: StepView) -> Proposed:
        return Proposed(view.rows.logp(view.live, proposal=True).double())


class TwistedProposal(_Stateless):
    """q(v | x_<t) ∝ pi0(v | x_<t) psi_t(x_<t, v): the locally optimal proposal for the twist.

    psi_t(x_<t, v) is the twist, or exp(r / beta) where v ends. Exact by default (``top_p=None``,
    ``top_k=None``): the potential of every token in the prior's support is evaluated, and the
    incremental weight is sum_v pi0(v | x_<t) psi_t(x_<t, v) / psi_{t-1}(x_<t) whatever is drawn.

    Cheap and still unbiased with ``top_p`` and/or ``top_k``: the potential is evaluated only on the
    head H of each row (the most likely tokens under pi0, within the tokens ``view.allowed`` lets
    through, holding at least ``top_p`` of their mass, at most ``top_k`` of them); every other supported
    token gets the parent's potential psi_{t-1}(x_<t) as a stand-in, so::

        q(v) ∝ pi0(v) psi_t(x_<t, v)   for v in H,      q(v) ∝ pi0(v) psi_{t-1}(x_<t)   otherwise

    q > 0 wherever pi0 > 0, and SMC weights the drawn token by the exact pi0 / q and the potential it
    evaluates for the drawn token (one row per particle), so E[Z_hat] = Z still. Only the variance
    depends on the head: the more of the mass where psi varies it holds, the closer to the exact one.

    Parameters
    ----------
    top_p : float in (0, 1], optional
        Evaluate the potential on the smallest set of most likely tokens with this prior mass.
    top_k : int >= 1, optional
        At most this many tokens per row (with ``top_p``: whichever is smaller).
    """

    lookahead = True
    masks_allowed = True  # honours view.allowed: q is 0 on forbidden tokens and normalised over the rest

    def __init__(self, top_p: float | None = None, top_k: int | None = None):
        if top_p is not None and (not is_real(top_p) or not 0 < top_p <= 1):
            raise ConfigError(f"top_p must be in (0, 1] or None, got {top_p!r}; e.g. 0.95")
        if top_k is not None:
            top_k = check_int(top_k, "top_k", 1)
        self.top_p = None if top_p is None else float(top_p)
        self.top_k = top_k

    def log_probs(self, state, view: StepView) -> Proposed:
        if self.top_p is None and self.top_k is None:
            return self._exact(view)
        return self._on_head(view)

    def _exact(self, view: StepView) -> Proposed:
        """Every supported (and allowed) token's potential evaluated."""
        logp0 = view.prior_logp.cpu()
        support = torch.isfinite(logp0)
        if view.allowed is not None:
            support = support & view.allowed.cpu()
        prompts = [view.prompts[i] for i in view.live.tolist()]
        cand_psi, cand_r = view.potentials.of_candidates(prompts, view.ids[view.live, : view.t], logp0, support)
        joint = logp0 + cand_psi
        norm = torch.logsumexp(joint, -1, keepdim=True)
        logq = torch.where(torch.isfinite(norm), joint - norm, logp0)  # no mass: weight -inf anyway
        return Proposed(logq.to(view.prior_logp.device), cand_psi, cand_r, dead=~torch.isfinite(norm.squeeze(-1)))

    def _on_head(self, view: StepView) -> Proposed:
        """The potentials on each row's head only; the parent's potential stands in elsewhere."""
        logp0 = view.prior_logp.cpu()
        a, V = logp0.shape
        lp = logp0 if view.allowed is None else logp0.masked_fill(~view.allowed.cpu(), -math.inf)
        log_mass = torch.logsumexp(lp, -1)                                 # log pi0(allowed) [a]
        rows, toks = self._head(lp, log_mass)                              # h head candidates
        prompts = [view.prompts[i] for i in view.live.tolist()]
        psi, r = view.potentials.at(prompts, view.ids[view.live, : view.t], rows, toks)
        parent = view.log_psi.double() if view.log_psi is not None else torch.zeros(a, dtype=torch.float64)
        parent = torch.where(torch.isfinite(parent), parent, 0.0)
        head_lp = lp[rows, toks]
        # log Z_q = log(sum_head pi0 psi + pi0(rest) psi_parent), the rest's mass without the head's
        head_mass = torch.zeros(a, dtype=torch.float64).index_add_(0, rows, head_lp.exp())
        rest = torch.log((log_mass.exp() - head_mass).clamp(min=0.0)) + parent
        joint_h = head_lp + psi
        top = torch.maximum(rest, torch.full((a,), -math.inf, dtype=torch.float64).scatter_reduce(
            0, rows, joint_h, "amax"))
        top = torch.where(torch.isfinite(top), top, 0.0)
        head_sum = torch.zeros(a, dtype=torch.float64).index_add_(0, rows, (joint_h - top[rows]).exp())
        total = torch.exp(rest - top) + head_sum
        log_zq = torch.log(total) + top
        dead = ~torch.isfinite(log_zq)
        logq = lp + (parent - log_zq)[:, None]                              # the rest: pi0 psi_parent / Z_q
        logq[rows, toks] = joint_h - log_zq[rows]                           # the head: pi0 psi / Z_q
        if bool(dead.any()):
            logq[dead] = logp0[dead]                                        # weight -inf anyway
        cand_psi = torch.full((a, V), math.nan, dtype=torch.float64)       # NaN: SMC evaluates a drawn one
        cand_r = torch.full((a, V), math.nan, dtype=torch.float64)
        cand_psi[rows, toks], cand_r[rows, toks] = psi, r
        return Proposed(logq.to(view.prior_logp.device), cand_psi, cand_r, dead=dead)

    def _head(self, lp: torch.Tensor, log_mass: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, tokens) [h]: each row's most likely tokens under ``lp`` [a, V] holding ``top_p`` of
        its mass exp(log_mass) (at most ``top_k``). A partial top-k, grown until every row is covered."""
        V = lp.shape[1]
        cap = V if self.top_k is None else min(self.top_k, V)
        k = cap if self.top_p is None else min(cap, 64)
        while True:
            top, idx = torch.topk(lp, k, dim=-1)                            # most likely first
            keep = torch.isfinite(top)
            if self.top_p is None:
                break
            share = torch.exp(top - log_mass[:, None])                      # NaN on a row with no mass
            before = share.cumsum(-1) - share                               # the share ranked above
            keep = keep & (before < self.top_p)
            covered = ~(before[:, -1] + share[:, -1] < self.top_p) | ~keep[:, -1]
            if k == cap or bool(covered.all()):
                break
            k = min(cap, 4 * k)
        r, c = torch.nonzero(keep, as_tuple=True)
        return r, idx[r, c]


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


def as_proposal(proposal, target: Target, prompts: Sequence[str]) -> Proposal:
    """The Proposal for ``smc(proposal=...)``: None, "twisted", a CausalLM, ExactPosterior(s) or a Proposal."""
    if proposal is None or proposal is target.prior:
        return PriorProposal()
    if isinstance(proposal, str):
        if proposal != "twisted":
            raise ConfigError(f"proposal {proposal!r} is not known; give None, 'twisted', a CausalLM, "
                              "ExactPosterior(s) or a Proposal")
        return TwistedProposal()
    if isinstance(proposal, (ExactPosterior, list, tuple, dict)):
        return ExactProposal(proposal, target, prompts)
    if isinstance(proposal, CausalLM):
        return LMProposal(check_proposal_lm(target, proposal))
    if isinstance(proposal, Proposal):
        if hasattr(proposal, "check"):  # e.g. LocallyConstrained: its mask and base, before any work
            proposal.check(target, prompts)
        return proposal
    raise ConfigError(f"proposal must be None, 'twisted', a CausalLM sharing the prior's tokenizer, "
                      f"ExactPosterior(s) or a Proposal (start, log_probs, advance, reindex, lm, lookahead); "
                      f"got {type(proposal).__name__}")
