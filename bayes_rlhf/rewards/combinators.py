"""Rewards built from rewards: hard constraints and weighted sums."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from bayes_rlhf._checks import is_real
from bayes_rlhf.errors import RewardError
from bayes_rlhf.rewards.base import evaluate_reward, reward_name


class Constraint:
    """A hard constraint: reward 0 where ``predicate`` holds and -inf where it does not.

    Parameters
    ----------
    predicate : callable
        With ``on="text"``: ``predicate(prompts, completions) -> sequence of bool``.
        With ``on="tokens"``: ``predicate(ids [n, T], mask [n, T]) -> BoolTensor [n]``.
    prefix_closed : bool
        True if a prefix that fails the predicate fails it for every extension (nothing banned,
        once written, can be undone): ``PrefixPotential`` may then prune such prefixes. Leave it
        False for a constraint a prefix can still meet later ("must contain w").
    """

    def __init__(self, predicate: Callable, on: str = "text", name: str | None = None, prefix_closed: bool = False):
        if on not in ("text", "tokens"):
            raise RewardError(f"Constraint(on=...) must be 'text' or 'tokens', got {on!r}")
        if not isinstance(prefix_closed, bool):
            raise RewardError(f"prefix_closed must be True or False, got {prefix_closed!r}")
        self.predicate, self.on, self.prefix_closed = predicate, on, prefix_closed
        self.name = name or getattr(predicate, "__name__", "constraint")

    def score_batch(self, lm, prompts: Sequence[str], ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.on == "tokens":
            ok = self.predicate(ids, mask)
        else:
            ok = self.predicate(list(prompts), lm.decode(ids, mask))
        ok = torch.as_tensor(ok, dtype=torch.bool).reshape(-1)
        zero = torch.zeros(ok.shape, dtype=torch.float64)
        return torch.where(ok.cpu(), zero, torch.full_like(zero, float("-inf")))


class WeightedSum:
    """``sum_i w_i * r_i`` over rewards of any kind. -inf from a term with w > 0 stays -inf."""

    def __init__(self, terms: Sequence[tuple[float, object]], name: str | None = None):
        if not terms:
            raise RewardError("WeightedSum needs at least one (weight, reward) pair")
        for w, _ in terms:
            if not is_real(w) or not math.isfinite(w):
                raise RewardError(f"WeightedSum weights must be finite numbers, got {w!r}")
        self.terms = [(float(w), r) for w, r in terms]
        self.name = name or " + ".join(f"{w:g}*{reward_name(r)}" for w, r in self.terms)

    def score_batch(self, lm, prompts: Sequence[str], ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(ids.shape[0], dtype=torch.float64)
        for w, r in self.terms:
            if w != 0.0:
                total = total + w * evaluate_reward(r, lm, prompts, ids, mask)
        return total
