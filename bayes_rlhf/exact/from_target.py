"""``exact_posterior(target, prompt)``: the ExactPosterior of a Target for one prompt (enumerate every
completion, score its reward, normalise). The table it returns and its queries are in ``posterior.py``."""

from __future__ import annotations

import torch

from bayes_rlhf.errors import PromptError
from bayes_rlhf.exact.enumerate import (DEFAULT_MAX_COMPLETIONS, DEFAULT_MEMORY_BUDGET, check_space,
                                        enumerate_completions)
from bayes_rlhf.exact.posterior import ExactPosterior
from bayes_rlhf.target import Target


def exact_posterior(target: Target, prompt: str, *, batch_size: int = 2048, reward_batch_size: int = 65536,
                    max_completions: int | None = DEFAULT_MAX_COMPLETIONS, progress: bool = False,
                    memory_budget: int = DEFAULT_MEMORY_BUDGET) -> ExactPosterior:
    """The exact posterior of ``target`` for one prompt, by enumerating every completion.

    Parameters
    ----------
    batch_size : int
        At most this many prefixes per forward pass of the tree walk.
    max_completions : int, optional
        Refuse (before any work) spaces larger than this; by default (None) refuse those whose
        table would not fit in the memory available; see ``SpaceTooLargeError``.
    memory_budget : int
        Bytes for the walk's KV caches and logits (default 2 GiB); fewer prefixes per forward
        pass when ``batch_size`` of them would not fit.
    progress : bool
        Show a progress bar over the prefixes.
    """
    if not isinstance(prompt, str):
        raise PromptError(f"exact_posterior takes one prompt (a str), got {type(prompt).__name__}; "
                          "call it once per prompt")
    T = target.max_new_tokens
    target.check_prompt(prompt)  # prompt errors (the context included) before any work
    check_space(target.prior, T, max_completions, memory_budget=memory_budget, batch_size=batch_size)
    ids, mask, prior_lp = enumerate_completions(target.prior, prompt, T, batch_size=batch_size,
                                                max_completions=max_completions, progress=progress,
                                                memory_budget=memory_budget)
    rewards = torch.cat([target.rewards(prompt, ids[s: s + reward_batch_size], mask[s: s + reward_batch_size])
                         for s in range(0, ids.shape[0], reward_batch_size)])
    return ExactPosterior(prompt, ids, mask, prior_lp, rewards, float(target.beta), target.prior)
