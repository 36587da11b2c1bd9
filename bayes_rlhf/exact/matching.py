"""Checks that an ExactPosterior a caller holds is a table of a given target, before it is used as
that target's posterior (its prior and reward, on completions spread over the table), or as a twist
or proposal of it (its support: zero only where the target's is)."""

from __future__ import annotations

import math

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
    _check_top_k(post, target, what)
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


def _check_top_k(post: ExactPosterior, target, what: str) -> None:
    k_table, k_target = getattr(post.lm, "top_k", None), target.prior.top_k
    if post.lm is not None and k_table != k_target:
        raise ConfigError(f"{what} for {post.prompt!r} was enumerated from a prior with top_k={k_table}, the "
                          f"target's has top_k={k_target}: it is 0 on prefixes the target can produce. Enumerate "
                          "it from this target (exact_posterior(target, prompt))")


def check_table_support(post: ExactPosterior, target, what: str, chunk: int = 65536) -> None:
    """ConfigError for a table (a twist's or proposal's) that is 0 where the target has mass: enumerated
    from another truncation of the prior, or under a reward that is -inf where the target's is not
    (E[Z_hat] < Z without a sign). The target's reward is evaluated on the table's -inf rows only."""
    _check_top_k(post, target, what)
    zero = torch.nonzero(post.rewards == -math.inf).squeeze(-1)
    for s in range(0, zero.numel(), chunk):
        rows = zero[s: s + chunk]
        r = target.rewards(post.prompt, post.completion_ids[rows], post.mask[rows])
        if bool((r > -math.inf).any()):
            i = int(rows[torch.nonzero(r > -math.inf)[0, 0]])
            text = post.vocabulary.decode(post.completion_ids[i: i + 1], post.mask[i: i + 1])[0]
            raise ConfigError(f"{what} for {post.prompt!r} gives completion {text!r} probability 0 (its reward "
                              "-inf), but the target's reward is finite there: it is of another target and would "
                              "drop that mass. Build it from exact_posterior(target, prompt)")
