"""Twists for SMC: log potentials log psi_t(x_{1:t}) on unfinished prefixes.

The twisted target at step t is pi0(x_{1:t}) psi_t(x_{1:t}); at the end psi = exp(r / beta).
The optimal twist is psi_t = exp(V_t / beta) with the soft value
V_t(x_{1:t}) = beta log E_pi0[exp(r / beta) | x_{1:t}]. Protocol (any object with)::

    log_potential(prompts: list[str] (one per row), ids: LongTensor [n, t], target) -> Tensor [n]

Implementations: ``ExactTwist`` (soft values from ExactPosterior tables), ``PrefixPotential``
(a reward the user evaluates on prefixes, divided by beta), and in ``learned_twist.py``
``LearnedTwist`` (a small GRU head over token ids, fitted to exact soft values by ``fit_twist``,
or from samples alone by contrastive twist learning, ``twist_learning.fit_twist_ctl``; runs on
any device). ``as_twist`` turns what a user passes to ``smc(twist=...)`` into one of them.
"""

from __future__ import annotations

import math
from typing import Protocol, Sequence

import torch

from bayes_rlhf._checks import did_you_mean, is_real
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.exact.matching import check_table_support
from bayes_rlhf.exact.posterior import ExactPosterior
from bayes_rlhf.rewards.base import evaluate_reward, reward_name


class Twist(Protocol):
    def log_potential(self, prompts: list[str], ids: torch.Tensor, target) -> torch.Tensor:
        """log psi_t of n unfinished prefixes ids [n, t] (float64 [n], CPU)."""


def posterior_table(posteriors: ExactPosterior | Sequence[ExactPosterior] | dict) -> dict[str, ExactPosterior]:
    """{prompt: ExactPosterior} from one posterior, a sequence or a dict."""
    if isinstance(posteriors, ExactPosterior):
        return {posteriors.prompt: posteriors}
    if isinstance(posteriors, dict):
        items = list(posteriors.values())
    else:
        items = list(posteriors)
    if not items or not all(isinstance(p, ExactPosterior) for p in items):
        raise ConfigError("expected ExactPosterior objects (one per prompt)")
    return {p.prompt: p for p in items}


def lookup(table: dict[str, ExactPosterior], prompt: str, what: str) -> ExactPosterior:
    if prompt not in table:
        raise ConfigError(f"the {what} has no ExactPosterior for prompt {prompt!r}; "
                          f"it has {sorted(table)}. Pass one exact_posterior per prompt")
    return table[prompt]


class ExactTwist:
    """The optimal twist psi_t = exp(V_t / beta) from exact posteriors (one per prompt)."""

    def __init__(self, posteriors: ExactPosterior | Sequence[ExactPosterior] | dict):
        self.table = posterior_table(posteriors)
        self._cache: dict = {}

    def check(self, target, prompts: Sequence[str]) -> None:
        for p in prompts:
            post = lookup(self.table, p, "twist")
            if abs(post.beta - target.beta) > 1e-12 * max(1.0, target.beta):
                raise ConfigError(f"the twist's posterior has beta={post.beta}, the target beta={target.beta}; "
                                  "build the twist from exact_posterior(target, prompt)")
            if post.completion_ids.shape[1] != target.max_new_tokens:
                raise ConfigError("the twist's posterior was enumerated with another max_new_tokens "
                                  f"({post.completion_ids.shape[1]} vs {target.max_new_tokens})")
            check_table_support(post, target, "the twist's posterior")

    def log_value(self, prompt: str, prefix: tuple) -> float:
        key = (prompt, prefix)
        if key not in self._cache:
            post = self.table[prompt]
            lo, hi = post.prefix_range(prefix)
            if lo == hi:
                self._cache[key] = -math.inf
            else:
                self._cache[key] = post.soft_value(prefix) / post.beta
        return self._cache[key]

    def log_potential(self, prompts: list[str], ids: torch.Tensor, target=None) -> torch.Tensor:
        rows = ids.tolist()
        return torch.tensor([self.log_value(p, tuple(r)) for p, r in zip(prompts, rows)], dtype=torch.float64)


class PrefixPotential:
    """A user-given reward on prefixes as a twist: log psi_t = r_prefix(c, x_{1:t}) / beta.

    ``reward`` follows the reward protocol (a text reward or a ``TokenReward``); it is called on
    unfinished prefixes. ``scale`` multiplies it (e.g. to temper a heuristic).

    A reward of -inf on an unfinished prefix would make psi = 0 there and drop every completion
    extending it, which keeps log Z unbiased only if none of them can have target mass (a banned
    word, once written, stays written). A hard constraint a prefix can still meet later ("must
    contain w") breaks that, silently with the twisted proposal. So -inf on a prefix is refused
    (ConfigError) unless ``prune=True`` says the reward is -inf on a prefix only when it is -inf on
    all its extensions (default: the reward's own ``prefix_closed``, as ``TokenMask.reward()`` and
    ``Constraint(..., prefix_closed=True)`` set it); SMC still raises if a pruned prefix's extension
    turns out finite.
    """

    def __init__(self, reward, scale: float = 1.0, prune: bool | None = None):
        if not callable(reward) and not hasattr(reward, "score_batch"):
            raise ConfigError("PrefixPotential needs a reward f(prompts, completions) or a TokenReward")
        if not is_real(scale) or not math.isfinite(scale):
            raise ConfigError(f"scale must be a finite number, got {scale!r}")
        if prune is None:
            prune = getattr(reward, "prefix_closed", False) is True
        if not isinstance(prune, bool):
            raise ConfigError(f"prune must be True, False or None (the reward's prefix_closed), got {prune!r}")
        self.reward, self.scale, self.prune = reward, float(scale), prune

    def log_potential(self, prompts: list[str], ids: torch.Tensor, target) -> torch.Tensor:
        mask = torch.ones(ids.shape, dtype=torch.bool)
        r = evaluate_reward(self.reward, target.prior, prompts, ids, mask)
        if not self.prune and bool((r == -math.inf).any()):
            i = int(torch.nonzero(r == -math.inf)[0, 0])
            text = target.prior.decode(ids[i: i + 1], mask[i: i + 1])[0]
            raise ConfigError(
                f"the prefix reward {reward_name(self.reward)!r} is -inf on the unfinished prefix {text!r}: as a "
                "twist that drops every completion extending it, which is right only if none of them can have "
                "finite reward. If so (a banned word stays banned), pass PrefixPotential(reward, prune=True); "
                "for a constraint a prefix can still meet later ('must contain w'), give a prefix reward that "
                "is finite there, or use twist=None (a token-level constraint: proposal=LocallyConstrained(...))")
        pruned = r == -math.inf  # stays psi = 0 whatever the scale (0 * -inf would be NaN, -1 * -inf +inf)
        return torch.where(pruned, -math.inf, self.scale * r.masked_fill(pruned, 0.0) / target.beta)


TWIST_NAMES = ("prefix", "exact")


def _named_twist(name: str, target, prompts: Sequence[str]):
    """"prefix": PrefixPotential(target.reward); "exact": ExactTwist from enumerating every prompt."""
    if name == "prefix":
        return PrefixPotential(target.reward)
    if name == "exact":
        from bayes_rlhf.exact.from_target import exact_posterior

        return ExactTwist([exact_posterior(target, p) for p in dict.fromkeys(prompts)])
    raise ConfigError(f"twist {name!r} is not known; use one of {list(TWIST_NAMES)} ('prefix': the target's "
                      "reward evaluated on prefixes; 'exact': the optimal twist, enumerating each prompt's "
                      "posterior, small models only), None, ExactPosterior(s), a prefix reward or a twist object"
                      f"{did_you_mean(name, TWIST_NAMES)}")


def as_twist(twist, target, prompts: Sequence[str]):
    """None, a name (``TWIST_NAMES``), a twist object, ExactPosterior(s) (-> ExactTwist) or a prefix
    reward (-> PrefixPotential)."""
    if twist is None:
        return None
    if isinstance(twist, str):
        twist = _named_twist(twist, target, prompts)
    elif isinstance(twist, (ExactPosterior, list, tuple, dict)):
        twist = ExactTwist(twist)
    elif not hasattr(twist, "log_potential"):
        if callable(twist) or hasattr(twist, "score_batch"):
            twist = PrefixPotential(twist)
        else:
            raise ConfigError(f"twist must be None, an ExactPosterior, a prefix reward or an object with "
                              f"log_potential(prompts, ids, target); got {type(twist).__name__}")
    if hasattr(twist, "check"):
        twist.check(target, prompts)
    return twist


_MOVED = ("LearnedTwist", "exact_prefix_values", "fit_twist")


def __getattr__(name: str):
    """The learned twist and its exact fit moved to ``learned_twist.py``; this import path still works."""
    if name in _MOVED:
        from bayes_rlhf.samplers import learned_twist

        return getattr(learned_twist, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
