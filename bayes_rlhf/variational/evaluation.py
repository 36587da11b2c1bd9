"""The exact evaluator of a training run: the enumerated posteriors of (some of) its prompts, and
the exact KL(q || pi*) and KL(pi* || q) of the policy against them."""

from __future__ import annotations

import torch

from bayes_rlhf.diagnostics.exact import compare
from bayes_rlhf.errors import ConfigError, TokenizerMismatchError
from bayes_rlhf.exact.posterior import ExactPosterior
from bayes_rlhf.exact.solve import exact_posterior


def as_posteriors(evaluator, target, prompts: list[str]) -> dict[str, ExactPosterior] | None:
    """Normalise ``evaluator`` (None, True, an ExactPosterior, a list or a dict) to prompt -> posterior."""
    if evaluator is None or evaluator is False:
        return None
    if evaluator is True:
        return {p: exact_posterior(target, p) for p in prompts}
    if isinstance(evaluator, ExactPosterior):
        evaluator = [evaluator]
    posts = dict(evaluator) if isinstance(evaluator, dict) else {e.prompt: e for e in evaluator}
    for p, post in posts.items():
        if not isinstance(post, ExactPosterior):
            raise ConfigError(f"evaluator entries must be ExactPosterior, got {type(post).__name__}")
        if p not in prompts:
            raise ConfigError(f"the evaluator has a posterior for {p!r}, which is not a training prompt")
        if not target.prior.same_tokenizer(post.lm):
            raise TokenizerMismatchError("the evaluator's posterior was built on another tokenizer")
        if post.beta != target.beta or post.completion_ids.shape[1] != target.max_new_tokens:
            raise ConfigError(f"the evaluator's posterior for {p!r} has beta={post.beta}, "
                              f"T={post.completion_ids.shape[1]}; the target has beta={target.beta}, "
                              f"T={target.max_new_tokens}")
    return posts


def evaluate(policy, posteriors: dict[str, ExactPosterior]) -> dict:
    """Exact KL(q || pi*), KL(pi* || q) and KL(q || pi0), averaged over the evaluator's prompts."""
    kq, kp, k0 = [], [], []
    with torch.no_grad():
        for post in posteriors.values():
            c = compare(policy, post)
            kq.append(c.kl_q_posterior)
            kp.append(c.kl_posterior_q)
            k0.append(c.kl_q_prior)
    return {"kl_q_posterior": sum(kq) / len(kq), "kl_posterior_q": sum(kp) / len(kp),
            "kl_prior_exact": sum(k0) / len(k0)}
