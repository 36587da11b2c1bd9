"""Checks that an ExactPosterior a caller holds is a table of a given target: its prior and its reward
(on completions spread over the table), before it is used as that target's posterior."""

from __future__ import annotations

import torch

from bayes_rlhf.errors import ConfigError
from bayes_rlhf.exact.posterior import ExactPosterior


def check_rewards(target, prompt: str, post: ExactPosterior, what: str, rows: int = 64) -> None:
    """ConfigError when ``post`` was enumerated for another reward than ``target``'s (checked on ``rows``
    completions spread over the table): e.g. a posterior of pi* given to a best-of-N run, which fits BoN_N."""
    k = post.completion_ids.shape[0]
    idx = torch.linspace(0, k - 1, min(rows, k)).long().unique()
    got = target.rewards(prompt, post.completion_ids[idx], post.mask[idx]).double().cpu()
    want = post.rewards[idx].double().cpu()
    same = (got == want) | torch.isclose(got, want, rtol=1e-5, atol=1e-6)
    if not bool(same.all()):
        raise ConfigError(f"{what} for {prompt!r} was enumerated for another reward than the target's (for a "
                          "bond / vbon run: the best-of-N law); pass evaluator=True, or bon_posterior(post, n) for "
                          "best-of-N, or exact_posterior(target, prompt)")


def check_prior(target, prompt: str, post: ExactPosterior, what: str, rows: int = 64) -> None:
    """ConfigError when ``post`` was enumerated from another prior than ``target.prior`` (its top_k, or
    its log-probs on ``rows`` completions spread over the table): its KLs would be to another pi*."""
    if post.lm is target.prior:
        return
    k_table, k_target = getattr(post.lm, "top_k", None), target.prior.top_k
    if post.lm is not None and k_table != k_target:
        raise ConfigError(f"{what} for {prompt!r} was enumerated from a prior with top_k={k_table}, the target's "
                          f"has top_k={k_target}; enumerate it from this target")
    k = post.completion_ids.shape[0]
    idx = torch.linspace(0, k - 1, min(rows, k)).long().unique()
    with torch.no_grad():
        got = target.prior.score(prompt, post.completion_ids[idx], post.mask[idx]).sum(-1).double().cpu()
    want = post.prior_log_probs[idx].double().cpu()
    # the table's prior is renormalised (a shift below 1e-4) and may be float32: 1e-3 is rounding, not a model
    if not bool(((got == want) | ((got - want).abs() < 1e-3)).all()):
        raise ConfigError(f"{what} for {prompt!r} was enumerated from another prior than the target's (log pi0 "
                          f"differs by up to {float((got - want).abs().max()):.3g} on its completions); enumerate "
                          "it from this target")
