"""Proposals for token-level SMC: where each particle's next token comes from.

A proposal is a plain object with one method set (``start``, ``log_probs``, ``advance``,
``reindex``, ``lm``, ``lookahead``; ``proposal_protocol``, with ``StepView`` and ``Proposed``);
SMC never looks at its type. This module holds the two simple ones and ``as_proposal``, which
converts the forms ``smc(proposal=...)`` accepts, once:

    None            PriorProposal      q = pi0 (bootstrap)
    CausalLM        LMProposal         q = another model with the prior's tokenizer
    ExactPosterior  ExactProposal      q = pi*(x_t | x_<t) from the enumerated tables, all particles at once
                                       (``exact_proposal.py``)
    "twisted"       TwistedProposal    q ∝ pi0(x_t | x_<t) psi_t(x_{1:t}), the locally optimal proposal
                                       (TwistedProposal(top_p=0.95): the potentials on the head only;
                                       ``twisted_proposal.py``)
    a Proposal      itself             e.g. LocallyConstrained(mask) (``constrained.py``): forbidden
                                       next tokens masked, the allowed mass in the weight

Every proposal name is importable from here as before.
"""

from __future__ import annotations

from typing import Sequence

from bayes_rlhf.errors import ConfigError
from bayes_rlhf.exact.posterior import ExactPosterior
from bayes_rlhf.models.causal_lm import CausalLM
from bayes_rlhf.samplers._common import check_covers_prior, check_proposal_lm
from bayes_rlhf.samplers.exact_proposal import ExactProposal
from bayes_rlhf.samplers.proposal_protocol import Proposal, Proposed, Stateless, StepView
from bayes_rlhf.samplers.twisted_proposal import TwistedProposal
from bayes_rlhf.target import Target

__all__ = ["Proposal", "Proposed", "StepView", "PriorProposal", "LMProposal", "TwistedProposal", "ExactProposal",
           "as_proposal"]


class PriorProposal(Stateless):
    """q = pi0: bootstrap SMC (the increment log pi0 - log q is 0)."""

    def log_probs(self, state, view: StepView) -> Proposed:
        return Proposed(view.prior_logp)


class LMProposal(Stateless):
    """q = a CausalLM sharing the prior's tokenizer, stepped beside the prior on the same rows."""

    def __init__(self, lm: CausalLM):
        self.lm = lm

    def log_probs(self, state, view: StepView) -> Proposed:
        return Proposed(view.rows.logp(view.live, proposal=True).double())


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
        check_covers_prior(target, check_proposal_lm(target, proposal), "smc")
        return LMProposal(proposal)
    if isinstance(proposal, Proposal):
        if hasattr(proposal, "check"):  # e.g. LocallyConstrained: its mask and base, before any work
            proposal.check(target, prompts)
        return proposal
    raise ConfigError(f"proposal must be None, 'twisted', a CausalLM sharing the prior's tokenizer, "
                      f"ExactPosterior(s) or a Proposal (start, log_probs, advance, reindex, lm, lookahead); "
                      f"got {type(proposal).__name__}")
