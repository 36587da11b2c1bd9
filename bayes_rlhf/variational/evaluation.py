"""Evaluators of a training run: what ``train_policy`` logs every ``eval_every`` steps.

One protocol; ``train_policy`` converts its ``evaluator=`` argument once, at the entry::

    ev = as_evaluator(evaluator)          # None, True, ExactPosterior(s) or an Evaluator -> Evaluator | None
    ev.check(prompts)                     # typed errors before any work
    posteriors = ev.prepare(target, prompts)   # after the target is placed (and fitted): checks against it,
                                          # enumerates (True); exact posteriors the run may reuse ({} if none)
    row |= ev.evaluate(policy, target)    # every eval_every steps; ``target`` at the step's beta
    ev.follows_beta                       # False: it only holds at the target's own beta (no KL control)

``ExactEvaluator``: exact KL(q || pi*), KL(pi* || q) and KL(q || pi0) against enumerated posteriors
(re-tilted to the step's beta when an adaptive KL controller moves it). ``SandwichEvaluator``
(``sandwich.py``): sampled ELBO / EUBO for models too large to enumerate.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, Sequence, runtime_checkable

import torch

from bayes_rlhf.diagnostics.exact import compare
from bayes_rlhf.diagnostics.frontier import retilt
from bayes_rlhf.errors import ConfigError, TokenizerMismatchError
from bayes_rlhf.exact.posterior import ExactPosterior
from bayes_rlhf.exact.from_target import exact_posterior
from bayes_rlhf.exact.matching import check_prior, check_rewards


@runtime_checkable
class Evaluator(Protocol):
    """The method set ``train_policy`` calls (see the module docstring)."""

    follows_beta: bool

    def check(self, prompts: Sequence[str]) -> None:
        """Typed errors (ConfigError) for a mismatch with the training prompts, before any work."""

    def prepare(self, target, prompts: Sequence[str]) -> dict[str, ExactPosterior]:
        """Work before the first step; the exact posteriors the run may reuse as a sample source ({} if none)."""

    def evaluate(self, policy, target) -> dict[str, float]:
        """Columns merged into the history row of an evaluated step."""


class ExactEvaluator:
    """Exact KL(q || pi*), KL(pi* || q) and KL(q || pi0), averaged over the posteriors' prompts.

    Parameters
    ----------
    posteriors : None, ExactPosterior, sequence of them or dict prompt -> ExactPosterior
        None: enumerate every training prompt's posterior in ``prepare``.
    """

    follows_beta = True

    def __init__(self, posteriors=None):
        self.table = None if posteriors is None else _as_table(posteriors)
        self.posteriors: dict[str, ExactPosterior] = {}

    def check(self, prompts: Sequence[str]) -> None:
        for p in self.table or {}:
            if p not in prompts:
                raise ConfigError(f"the evaluator has a posterior for {p!r}, which is not a training prompt")

    def prepare(self, target, prompts: Sequence[str]) -> dict[str, ExactPosterior]:
        if self.table is None:
            self.posteriors = {p: exact_posterior(target, p) for p in prompts}
            return self.posteriors
        self.check(prompts)
        for p, post in self.table.items():
            if not target.prior.vocabulary.same_as(post.vocabulary):
                raise TokenizerMismatchError("the evaluator's posterior was built on another tokenizer")
            if post.beta != target.beta or post.completion_ids.shape[1] != target.max_new_tokens:
                raise ConfigError(f"the evaluator's posterior for {p!r} has beta={post.beta}, "
                                  f"T={post.completion_ids.shape[1]}; the target has beta={target.beta}, "
                                  f"T={target.max_new_tokens}")
            check_rewards(target, p, post, "the evaluator's posterior")
            check_prior(target, p, post, "the evaluator's posterior")
        self.posteriors = dict(self.table)
        return self.posteriors

    def evaluate(self, policy, target) -> dict[str, float]:
        """``evaluate`` against the posteriors, re-tilted to ``target.beta`` where it moved (the same tables)."""
        beta = target.beta
        return evaluate(policy, {p: post if post.beta == beta else retilt(post, beta)
                                 for p, post in self.posteriors.items()})


def _as_table(posteriors) -> dict[str, ExactPosterior]:
    """prompt -> ExactPosterior from one posterior, a sequence or a dict (ConfigError for other entries)."""
    if isinstance(posteriors, ExactPosterior):
        posteriors = [posteriors]
    items = list(posteriors.items()) if isinstance(posteriors, dict) else [(getattr(e, "prompt", None), e)
                                                                            for e in posteriors]
    for _, post in items:
        if not isinstance(post, ExactPosterior):
            raise ConfigError(f"evaluator entries must be ExactPosterior, got {type(post).__name__}")
    return dict(items)


def as_evaluator(evaluator) -> Evaluator | None:
    """The Evaluator for ``train_policy(evaluator=...)``: None or False (none; an empty collection too),
    True (every prompt enumerated), ExactPosterior(s) as one, a sequence or a dict, or an Evaluator."""
    if evaluator is None or evaluator is False:
        return None
    if evaluator is True:
        return ExactEvaluator()
    if isinstance(evaluator, ExactPosterior):
        return ExactEvaluator(evaluator)
    if isinstance(evaluator, Evaluator):
        return evaluator
    if isinstance(evaluator, Iterable) and not isinstance(evaluator, (str, bytes)):
        ev = ExactEvaluator(evaluator)
        return ev if ev.table else None
    raise ConfigError(f"evaluator must be None, True, ExactPosterior(s) (one, a list or a dict prompt -> "
                      f"posterior), a SandwichEvaluator or an Evaluator (check, prepare, evaluate, follows_beta); "
                      f"got {type(evaluator).__name__}")


def evaluate(policy, posteriors: dict[str, ExactPosterior]) -> dict:
    """Exact KL(q || pi*), KL(pi* || q) and KL(q || pi0), averaged over the evaluator's prompts.

    ``policy`` is a CausalLM, or {prompt: log q [K]} already computed on each posterior's table.
    """
    kq, kp, k0 = [], [], []
    with torch.no_grad():
        for prompt, post in posteriors.items():
            c = compare(policy[prompt] if isinstance(policy, dict) else policy, post)
            kq.append(c.kl_q_posterior)
            kp.append(c.kl_posterior_q)
            k0.append(c.kl_q_prior)
    return {"kl_q_posterior": sum(kq) / len(kq), "kl_posterior_q": sum(kp) / len(kp),
            "kl_prior_exact": sum(k0) / len(k0)}
