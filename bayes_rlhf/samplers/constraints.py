"""Constraints checkable on a prefix, as their allowed next tokens (for ``LocallyConstrained``).

A constraint is an object with one method (``as_constraint`` converts the other forms)::

    allowed_next(prompts [a], prefixes LongTensor [a, t], target, prior_logp [a, V])
        -> BoolTensor [a, V] (or [V]: the same row for every particle), True where v may follow

    TokenMask(forbidden [V])          a token set: a completion is allowed iff it has no forbidden token
                                      (must_end=True: and it ends with EOS within T; genlm's semantics)
    TokenMask.from_text(lm, pred)     forbidden = tokens whose decoded text satisfies pred (lipogram)
    NextTokenConstraint(fn)           fn(prompts [a], prefixes [a, t]) -> allowed next tokens [a, V]
    PrefixConstraint(reward)          a reward whose -inf is prefix-closed (``br.Constraint``, a
                                      ``TokenReward``), evaluated on every candidate prefix + v at once

A constraint must be exact: once it forbids a prefix, every completion through the prefix has
r = -inf under the target (``constrained.py`` checks this where it can).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from bayes_rlhf.errors import ConfigError
from bayes_rlhf.models.causal_lm import CausalLM
from bayes_rlhf.rewards.base import TokenReward, evaluate_reward


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

        # without must_end a forbidden token, once drawn, stays: -inf on a prefix is -inf on its extensions
        return TokenReward(no_forbidden_token, name=name, prefix_closed=not must_end)


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
