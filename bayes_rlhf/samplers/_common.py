"""Checks and small helpers shared by the samplers (input validation happens before any work)."""

from __future__ import annotations

from typing import Sequence

import torch

from bayes_rlhf._checks import check_int
from bayes_rlhf.errors import ConfigError, NoMassError, PromptError, TokenizerMismatchError
from bayes_rlhf.logweights import log_mean_exp
from bayes_rlhf.models.causal_lm import CausalLM
from bayes_rlhf.target import Target


def check_target(target) -> None:
    if not isinstance(target, Target):
        raise ConfigError(f"expected a bayes_rlhf.Target, got {type(target).__name__}; build one with "
                          "Target(prior=lm, reward=reward, beta=..., max_new_tokens=...)")


def check_count(value, name: str) -> int:
    """``value`` as a Python int >= 1 (numpy integers accepted, bools refused)."""
    return check_int(value, name, 1)


def as_prompts(target: Target, prompt: str | Sequence[str]) -> list[str]:
    """A non-empty list of prompts, each encodable by the prior (PromptError otherwise)."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise PromptError("prompts is empty; pass a prompt string or a non-empty list of prompts")
    for p in prompts:
        target.check_prompt(p)
    return prompts


def check_proposal_lm(target: Target, proposal) -> CausalLM:
    """The proposal CausalLM (the prior when None), checked to share the prior's tokenizer."""
    if proposal is None:
        return target.prior
    if not isinstance(proposal, CausalLM):
        raise ConfigError(f"proposal must be a CausalLM (or None for the prior), got {type(proposal).__name__}")
    if not proposal.same_tokenizer(target.prior):
        raise TokenizerMismatchError("the proposal's tokenizer differs from the prior's (vocabulary or EOS); "
                                     "use a proposal fine-tuned from the same base model as the prior")
    return proposal


def _same_truncation(a: CausalLM, b: CausalLM) -> bool:
    """Whether a and b are one distribution: the same object, or the same weights and top-k."""
    return a is b or (a.model is b.model and a.top_k == b.top_k and a.support is b.support)


def check_covers_prior(target: Target, q: CausalLM, sampler: str) -> None:
    """Refuse a proposal that can give probability 0 where the prior has mass (ConfigError).

    An importance weight pi0 exp(r / beta) / q never sees a completion q cannot draw, so with such
    a q the estimate of Z misses that mass without a sign. A CausalLM is zero only where it is
    truncated: by its own ``top_k`` (its own k most likely tokens, which need not be the prior's),
    or by a ``support`` restriction to another truncated model's top k.
    """
    prior = target.prior
    if q is prior or _same_truncation(q, prior):
        return
    own = q.top_k is not None and q.top_k < q.vocab_size
    support_ok = q.support is None or (prior.top_k is not None and _same_truncation(q.support, prior))
    if not own and support_ok:
        return
    what = (f"its own top_k={q.top_k} (its k most likely tokens, not necessarily the prior's)" if own else
            f"the top-{q.support.top_k} support of another model than the target's prior")
    raise ConfigError(f"{sampler}: the proposal is truncated to {what}, so it can give probability 0 to "
                      "completions the prior can produce, and the importance weights would miss their mass "
                      "(E[Z_hat] < Z, with no warning). Pass the proposal untruncated (lm.with_top_k(None)), "
                      "or, for a target truncated to top-k, restricted to that prior's support "
                      "(lm.with_top_k(None).with_support(target.prior))")


def prior_log_probs(target: Target, proposal: CausalLM, prompts_per_row: list[str], ids: torch.Tensor,
                    mask: torch.Tensor, proposal_log_probs: torch.Tensor) -> torch.Tensor:
    """log pi0 of completions [n] (float64, CPU); reuses the proposal's when it is the prior."""
    if proposal is target.prior:
        return proposal_log_probs.double().cpu()
    return target.prior.score(prompts_per_row, ids, mask).sum(-1).double().cpu()


def log_z_per_prompt(log_weights: torch.Tensor, prompt_index: torch.Tensor, num_prompts: int,
                     prompts: Sequence[str], what: str = "sample") -> torch.Tensor:
    """log mean exp(log_weights) within each prompt, Tensor [P]; NoMassError if a prompt has none."""
    out = torch.empty(num_prompts, dtype=torch.float64)
    for p in range(num_prompts):
        lz = log_mean_exp(log_weights[prompt_index == p])
        if not torch.isfinite(lz):
            raise NoMassError(
                f"every {what} for prompt {prompts[p]!r} has zero target mass (reward -inf or zero prior "
                f"probability): the target has no mass where the proposal looked. Draw more samples, "
                "use a proposal that satisfies the constraint, or relax the reward")
        out[p] = lz
    return out
