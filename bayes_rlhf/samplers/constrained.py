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

Constraints are objects with one method (``as_constraint`` converts the other forms)::

    allowed_next(prompts [a], prefixes LongTensor [a, t], target, prior_logp [a, V])
        -> BoolTensor [a, V] (or [V]: the same row for every particle), True where v may follow

    TokenMask(forbidden [V])          a token set: a completion is allowed iff it has no forbidden token
                                      (must_end=True: and it ends with EOS within T; genlm's semantics)
    TokenMask.from_text(lm, pred)     forbidden = tokens whose decoded text satisfies pred (lipogram)
    NextTokenConstraint(fn)           fn(prompts [a], prefixes [a, t]) -> allowed next tokens [a, V]
    PrefixConstraint(reward)          a reward whose -inf is prefix-closed (``br.Constraint``, a
                                      ``TokenReward``), evaluated on every candidate prefix + v at once

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
from typing import Callable, Sequence

import torch

from bayes_rlhf.errors import ConfigError, ConstraintMismatchError
from bayes_rlhf.models.causal_lm import CausalLM
from bayes_rlhf.rewards.base import TokenReward, evaluate_reward
from bayes_rlhf.samplers._common import check_proposal_lm
from bayes_rlhf.samplers.proposals import (LMProposal, PriorProposal, Proposal, Proposed, StepView,
                                           TwistedProposal)


class TokenMask:
    """A token-set constraint: a completion is allowed iff none of its tokens is forbidden.

    Parameters
    ----------
    forbidden : BoolTensor [V]
        True for the tokens that may never be drawn (V: the prior's vocabulary size).
    must_end : bool
        Also require the completion to end with EOS within max_new_tokens (genlm-control's
        semantics): at the last position only EOS is allowed, so its probability is in the weight.
    eos_token_id : int, optional
        The EOS id (needed by ``reward()`` with ``must_end``; ``from_text`` takes the model's).
    """

    def __init__(self, forbidden, *, must_end: bool = False, eos_token_id: int | None = None):
        forbidden = torch.as_tensor(forbidden)
        if forbidden.dim() != 1 or forbidden.dtype != torch.bool:
            raise ConfigError(f"TokenMask needs a 1-d BoolTensor [V] of forbidden tokens, got dtype "
                              f"{forbidden.dtype} and shape {tuple(forbidden.shape)}")
        if bool(forbidden.all()):
            raise ConfigError("TokenMask forbids every token; nothing could be generated")
        if not isinstance(must_end, bool):
            raise ConfigError(f"must_end must be a bool, got {must_end!r}")
        if eos_token_id is not None and not (0 <= int(eos_token_id) < forbidden.numel()):
            raise ConfigError(f"eos_token_id {eos_token_id!r} is not a token id of the mask's {forbidden.numel()}")
        if must_end and eos_token_id is not None and bool(forbidden[int(eos_token_id)]):
            raise ConfigError("must_end=True but EOS is forbidden: no completion could be allowed")
        self.forbidden = forbidden.cpu()
        self.allowed = ~self.forbidden
        self.must_end = must_end
        self.eos_token_id = None if eos_token_id is None else int(eos_token_id)

    @classmethod
    def from_text(cls, lm: CausalLM, predicate: Callable[[str], bool], *, must_end: bool = False) -> "TokenMask":
        """Forbid every token whose decoded text (special tokens decode to '') satisfies ``predicate``.

        The lipogram "no letter e": ``TokenMask.from_text(lm, lambda s: "e" in s.lower())``. With a
        byte-level tokenizer an ASCII letter is in the text iff it is in some token's text, so the
        mask is exact for it.
        """
        if not isinstance(lm, CausalLM):
            raise ConfigError(f"TokenMask.from_text needs the prior CausalLM, got {type(lm).__name__}")
        texts = lm.tokenizer.batch_decode([[i] for i in range(lm.vocab_size)], skip_special_tokens=True)
        return cls(torch.tensor([bool(predicate(s)) for s in texts], dtype=torch.bool), must_end=must_end,
                   eos_token_id=lm.eos_token_id)

    def check(self, target) -> None:
        if self.forbidden.numel() != target.prior.vocab_size:
            raise ConfigError(f"the TokenMask has {self.forbidden.numel()} entries, the prior's vocabulary "
                              f"{target.prior.vocab_size}; build it from the prior (TokenMask.from_text(lm, ...))")
        eos = target.prior.eos_token_id
        if self.must_end and (eos is None or (self.eos_token_id is not None and self.eos_token_id != eos)):
            raise ConfigError(f"TokenMask(must_end=True) needs the prior's EOS id ({eos}); the mask has "
                              f"{self.eos_token_id}")

    def allowed_next(self, prompts: Sequence[str], prefixes: torch.Tensor, target,
                     prior_logp: torch.Tensor) -> torch.Tensor:
        """BoolTensor [V]: the next tokens allowed after any allowed prefix (one row serves every particle);
        with ``must_end``, EOS alone at the last position."""
        if self.must_end and prefixes.shape[1] + 1 == target.max_new_tokens:
            last = torch.zeros_like(self.allowed)
            last[target.prior.eos_token_id] = True
            return last
        return self.allowed

    def reward(self, name: str = "token_mask") -> TokenReward:
        """The reward this constraint stands for: 0 if no token of the completion is forbidden (and, with
        ``must_end``, it ends with EOS), else -inf."""
        if self.must_end and self.eos_token_id is None:
            raise ConfigError("TokenMask(must_end=True).reward() needs eos_token_id= (from_text sets it)")
        forbidden, eos, must_end = self.forbidden, self.eos_token_id, self.must_end

        def no_forbidden_token(ids, mask):
            bad = (forbidden.to(ids.device)[ids] & mask).any(-1)
            if must_end:
                bad = bad | ~((ids == eos) & mask).any(-1)
            return torch.where(bad, -math.inf, 0.0).double().cpu()

        return TokenReward(no_forbidden_token, name=name)


class NextTokenConstraint:
    """A prefix-checkable constraint given as its allowed next tokens.

    Parameters
    ----------
    fn : callable
        ``fn(prompts: list[str] [a], prefixes: LongTensor [a, t]) -> BoolTensor [a, V]``, True where
        token v may follow the (allowed) prefix. It must be exact: a token it forbids must make
        every completion through it violate the target's constraint (r = -inf).
    """

    def __init__(self, fn: Callable):
        if not callable(fn):
            raise ConfigError(f"NextTokenConstraint needs fn(prompts, prefixes) -> BoolTensor [a, V], got "
                              f"{type(fn).__name__}")
        self.fn = fn

    def allowed_next(self, prompts: Sequence[str], prefixes: torch.Tensor, target,
                     prior_logp: torch.Tensor) -> torch.Tensor:
        out = torch.as_tensor(self.fn(list(prompts), prefixes))
        if out.dtype != torch.bool or tuple(out.shape) != tuple(prior_logp.shape):
            raise ConfigError(f"the NextTokenConstraint function returned dtype {out.dtype}, shape "
                              f"{tuple(out.shape)}; it must return a BoolTensor {tuple(prior_logp.shape)} "
                              "(rows x vocab)")
        return out


class PrefixConstraint:
    """A reward whose -inf set is prefix-closed, checked on every candidate prefix + v in one call.

    v may follow a prefix iff ``reward(prompt, prefix + v) > -inf``. Right for ``br.Constraint``
    predicates and token rewards that, once violated, stay violated (a lipogram; banned words); for
    large vocabularies a ``TokenMask`` or ``NextTokenConstraint`` is far cheaper (this evaluates
    a x |support| rows per step).
    """

    def __init__(self, reward):
        if not callable(reward) and not hasattr(reward, "score_batch"):
            raise ConfigError(f"PrefixConstraint needs a reward (br.Constraint, TokenReward or a text reward), "
                              f"got {type(reward).__name__}")
        self.reward = reward

    def allowed_next(self, prompts: Sequence[str], prefixes: torch.Tensor, target,
                     prior_logp: torch.Tensor) -> torch.Tensor:
        support = torch.isfinite(prior_logp).cpu()
        rows, toks = torch.nonzero(support, as_tuple=True)
        ids = torch.cat([prefixes[rows], toks[:, None]], 1)
        r = evaluate_reward(self.reward, target.prior, [prompts[i] for i in rows.tolist()], ids,
                            torch.ones(ids.shape, dtype=torch.bool))
        out = torch.zeros(support.shape, dtype=torch.bool)
        out[rows, toks] = r > -math.inf
        return out


def as_constraint(constraint):
    """A constraint object from a BoolTensor [V] of forbidden tokens (TokenMask), a reward with a
    prefix-closed -inf set (PrefixConstraint), or an object with ``allowed_next``."""
    if hasattr(constraint, "allowed_next"):
        return constraint
    if isinstance(constraint, torch.Tensor):
        return TokenMask(constraint)
    if hasattr(constraint, "score_batch"):
        return PrefixConstraint(constraint)
    raise ConfigError(f"constraint must be a TokenMask, a BoolTensor [V] of forbidden tokens, a "
                      f"NextTokenConstraint, a PrefixConstraint or a br.Constraint; got {type(constraint).__name__} "
                      "(wrap a function: NextTokenConstraint(fn) for allowed next tokens, PrefixConstraint(reward))")


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
            check_proposal_lm(target, self._lm_to_check)
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
        # exp of the base's log-probs, not of the masked ones: exp is several times slower where it underflows
        if allowed.dim() == 1:  # one row for every particle: a matrix-vector product and one bias row
            mass = torch.exp(log_q) @ allowed.to(log_q.dtype)
            bias = torch.zeros(allowed.shape, dtype=log_q.dtype, device=log_q.device).masked_fill(~allowed, -math.inf)
            masked = log_q + bias
        else:
            mass = (torch.exp(log_q) * allowed).sum(-1)
            masked = log_q.masked_fill(~allowed, -math.inf)
        log_mass = torch.log(mass)  # log A (the base's log-probs are normalised: no overflow)
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
