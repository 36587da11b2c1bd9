"""Locally constrained proposals: constraints checked token by token, so no particle dies.

For a constraint that can be checked on a prefix (once violated, every completion through the
prefix has r = -inf: a lipogram, a banned-word list, a grammar), propose from the base with the
forbidden next tokens masked and renormalised, and let the weight carry the allowed mass::

    A(x_<t) = sum_{v allowed} q_base(v | x_<t)
    q(v | x_<t) = q_base(v | x_<t) 1[v allowed] / A(x_<t)
    log w += log pi0(x_t | x_<t) - log q(x_t | x_<t)          # = log A(x_<t) with the prior as base
             + log psi' - log psi                              # the twist, if any, as usual

The product of the increments is still pi0(x) exp(r / beta) / q(x) on every completion q can
draw, and q misses only completions that violate the constraint (r = -inf there), so E[Z_hat] = Z
and the samples target pi*. With the prior as base and no twist, this is the twisted proposal
for the twist psi_t = 1[x_{1:t} allowed], at about the cost of bootstrap SMC (a few passes over
the [a, V] log-probs per step, no reward calls on candidates).

The constraint forms (``TokenMask``, ``NextTokenConstraint``, ``PrefixConstraint``,
``as_constraint``) live in ``constraints.py`` and are importable from here as before.

The target's reward stays the ground truth. If it forbids more than the constraint (another hard
part, e.g. "must end with EOS"), those particles die as in bootstrap SMC: correct, only noisier
(``strict=True`` makes that a ``ConstraintMismatchError``). If the constraint forbids a completion
the target allows, the estimate would be biased low: ``check=True`` (the default) evaluates the
target's reward on each row's most likely forbidden completion wherever a forbidden candidate
would end the completion (EOS, or the last token) and raises ``ConstraintMismatchError`` if it is
finite. That check costs one reward call of at most one row per particle per such step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import torch

from bayes_rlhf.errors import ConfigError, ConstraintMismatchError
from bayes_rlhf.models.causal_lm import CausalLM
from bayes_rlhf.samplers._common import check_covers_prior, check_proposal_lm
from bayes_rlhf.samplers.constraints import NextTokenConstraint, PrefixConstraint, TokenMask, as_constraint
from bayes_rlhf.samplers.proposal_protocol import Proposal, Proposed, StepView
from bayes_rlhf.samplers.proposals import LMProposal, PriorProposal
from bayes_rlhf.samplers.twisted_proposal import TwistedProposal

__all__ = ["LocallyConstrained", "TokenMask", "NextTokenConstraint", "PrefixConstraint", "as_constraint"]


class LocallyConstrained:
    """The proposal ``base`` with the constraint's forbidden next tokens masked (see the module docstring).

    Parameters
    ----------
    constraint : TokenMask, BoolTensor [V] (forbidden), NextTokenConstraint, PrefixConstraint or br.Constraint
    base : None, "twisted", CausalLM or a Proposal
        What is masked: None the prior (weight log A = log pi0(allowed | x_<t) per step); "twisted"
        or ``TwistedProposal(top_p=...)`` (evaluates the potentials on allowed tokens only); a
        CausalLM sharing the prior's tokenizer; any Proposal.
    check : bool
        Evaluate the target's reward on the most likely forbidden completion where one would end, and
        raise ``ConstraintMismatchError`` if the target allows it (the estimate would be biased).
    strict : bool
        Raise ``ConstraintMismatchError`` if a completion the constraint allows has r = -inf (the
        target has a hard part the constraint does not carry). Default False: such particles die.

    Example
    -------
    >>> mask = TokenMask.from_text(lm, lambda s: "e" in s.lower())          # doctest: +SKIP
    >>> target = br.Target(prior=lm, reward=mask.reward(), beta=1.0, max_new_tokens=8)  # doctest: +SKIP
    >>> ws = br.smc(target, "My favourite animal is", 64, proposal=LocallyConstrained(mask))  # doctest: +SKIP
    """

    reweights = True  # the weights change at every step (the allowed mass), with or without a twist

    def __init__(self, constraint, base=None, *, check: bool = True, strict: bool = False):
        self.constraint = as_constraint(constraint)
        if not isinstance(check, bool) or not isinstance(strict, bool):
            raise ConfigError(f"check and strict must be bools, got {check!r}, {strict!r}")
        self.check_support, self.strict = check, strict
        self._lm_to_check = base if isinstance(base, CausalLM) else None
        if base is None:
            self.base = PriorProposal()
        elif isinstance(base, str):
            if base != "twisted":
                raise ConfigError(f"base {base!r} is not known; give None (the prior), 'twisted', a CausalLM "
                                  "or a Proposal")
            self.base = TwistedProposal()
        elif isinstance(base, CausalLM):
            self.base = LMProposal(base)
        elif isinstance(base, Proposal):
            self.base = base
        else:
            raise ConfigError(f"base must be None, 'twisted', a CausalLM or a Proposal, got {type(base).__name__}")

    lm = property(lambda self: self.base.lm)
    lookahead = property(lambda self: self.base.lookahead)

    def check(self, target, prompts: Sequence[str]) -> None:
        """Checked by ``smc`` before any work: the mask's size, the base LM's tokenizer."""
        if self._lm_to_check is target.prior:  # the prior itself: no second model to step
            self.base = PriorProposal()
        elif self._lm_to_check is not None:
            check_covers_prior(target, check_proposal_lm(target, self._lm_to_check), "LocallyConstrained")
        if hasattr(self.constraint, "check"):
            self.constraint.check(target)
        if hasattr(self.base, "check"):
            self.base.check(target, prompts)

    def start(self, num_particles: int):
        return self.base.start(num_particles)

    def advance(self, state, view: StepView, tokens: torch.Tensor, proposed: Proposed):
        return self.base.advance(state, view, tokens, proposed.extra)

    def reindex(self, state, idx: torch.Tensor):
        return self.base.reindex(state, idx)

    def log_probs(self, state, view: StepView) -> Proposed:
        target, a = view.potentials.target, view.live.numel()
        prompts = [view.prompts[i] for i in view.live.tolist()]
        prefixes = view.ids[view.live, : view.t]
        allowed = self.constraint.allowed_next(prompts, prefixes, target, view.prior_logp)  # [V] or [a, V]
        rows_allowed = allowed.expand(a, -1) if allowed.dim() == 1 else allowed
        if self.check_support:
            self._check_forbidden_ends(target, prompts, prefixes, view.prior_logp, rows_allowed, view.t)
        out = self.base.log_probs(state, dataclasses.replace(view, allowed=rows_allowed))
        if getattr(self.base, "masks_allowed", False):  # it proposed allowed tokens only, renormalised
            return dataclasses.replace(out, extra=out)
        log_q, dead = self._mask(out.log_q, allowed)
        if out.dead is not None:
            dead = dead | out.dead.cpu()
        log_psi = None if out.log_psi is None else out.log_psi.masked_fill(~rows_allowed.cpu(), -math.inf)
        return Proposed(log_q, log_psi, out.rewards, extra=out, dead=dead)

    def _mask(self, log_q: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q_base masked to ``allowed`` ([V] or [a, V]) and renormalised, log-probs [a, V]; dead rows [a]
        (no allowed mass: left as the base's, their weight is set to 0)."""
        allowed = allowed.to(log_q.device)
        # the base's probabilities by softmax, not torch.exp: on CPU exp takes a slow path on -inf entries
        # (a top-k prior's row, SmolLM2 8 x 49,152: 4.0 ms against softmax's 0.45 ms, and 0.2 / 0.5 ms
        # with none). softmax divides by its own sum, so the float32 rounding of log_softmax's normaliser
        # (sum exp(log q) - 1 = 8e-6 on a SmolLM2 row) stays out of A. A row with no finite entry gives
        # NaN: dead, as it should be.
        probs = torch.softmax(log_q, -1)
        if allowed.dim() == 1:  # one row for every particle: a matrix-vector product and one bias row
            mass = probs @ allowed.to(log_q.dtype)
            bias = torch.zeros(allowed.shape, dtype=log_q.dtype, device=log_q.device).masked_fill(~allowed, -math.inf)
            masked = log_q + bias
        else:
            mass = (probs * allowed).sum(-1)
            masked = log_q.masked_fill(~allowed, -math.inf)
        log_mass = torch.log(mass)  # log A
        small = mass < 1e-280  # A near underflow: in log space, exactly
        if bool(small.any()):
            log_mass[small] = torch.logsumexp(masked[small], -1)
        dead = ~torch.isfinite(log_mass)
        out = masked.sub_(torch.where(dead, 0.0, log_mass)[:, None])
        if bool(dead.any()):
            out[dead] = log_q[dead]
        return out, dead.cpu()

    def _check_forbidden_ends(self, target, prompts, prefixes, logp0, allowed, t) -> None:
        """ConstraintMismatchError if the target's reward is finite on a row's likeliest forbidden ending
        (any forbidden token at the last step, EOS if forbidden before)."""
        eos = target.prior.eos_token_id
        if t + 1 == target.max_new_tokens:
            cand = ~allowed.cpu() & torch.isfinite(logp0).cpu()
            lp = logp0.cpu()
        elif eos is not None:
            cand = (~allowed[:, eos:eos + 1].cpu()) & torch.isfinite(logp0[:, eos:eos + 1]).cpu()
            lp = logp0[:, eos:eos + 1].cpu()
        else:
            return
        rows = torch.nonzero(cand.any(-1)).squeeze(-1)
        if rows.numel() == 0:
            return
        toks = torch.where(cand[rows], lp[rows], -math.inf).argmax(-1)
        if cand.shape[1] == 1:
            toks = torch.full_like(toks, eos)
        ids = torch.cat([prefixes[rows], toks[:, None]], 1)
        plist = [prompts[i] for i in rows.tolist()]
        r = target.rewards(plist, ids, torch.ones(ids.shape, dtype=torch.bool))
        bad = torch.nonzero(r > -math.inf).squeeze(-1)
        if bad.numel():
            i = int(bad[0])
            text = target.prior.decode(ids[i:i + 1], torch.ones((1, ids.shape[1]), dtype=torch.bool))[0]
            raise ConstraintMismatchError(
                f"the constraint forbids the completion {text!r} (token {int(toks[i])}) of prompt {plist[i]!r}, but "
                f"the target's reward gives it {float(r[i]):.4g}, not -inf: the proposal can never draw what the "
                "target allows, so Z and the samples would be biased. Make the reward -inf wherever the constraint "
                "is violated (e.g. br.WeightedSum([(1, reward), (1, mask.reward())])) or loosen the constraint; "
                "check=False skips this check")

    def check_rewards(self, prompts: Sequence[str], ids: torch.Tensor, rewards: torch.Tensor) -> None:
        """With ``strict``: ConstraintMismatchError if an allowed finished completion has r = -inf."""
        if not self.strict:
            return
        bad = torch.nonzero(rewards == -math.inf).squeeze(-1)
        if bad.numel():
            i = int(bad[0])
            raise ConstraintMismatchError(
                f"a completion the constraint allows (ids {ids[i].tolist()}, prompt {prompts[i]!r}) has reward -inf "
                "under the target: the target has a hard constraint the proposal does not carry, so particles die. "
                "Add it to the constraint, or pass strict=False to let such particles die (still unbiased)")
