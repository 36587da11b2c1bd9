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
