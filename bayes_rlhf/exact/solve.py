"""``exact_posterior(target, prompt)``: enumerate, score rewards, normalise."""

from __future__ import annotations

import torch

from bayes_rlhf.errors import PromptError
from bayes_rlhf.exact.enumerate import DEFAULT_MAX_COMPLETIONS, check_space, enumerate_completions
from bayes_rlhf.exact.posterior import ExactPosterior
from bayes_rlhf.target import Target


def exact_posterior(target: Target, prompt: str, *, batch_size: int = 2048, reward_batch_size: int = 65536,
                    max_completions: int = DEFAULT_MAX_COMPLETIONS, progress: bool = False) -> ExactPosterior:
    """The exact posterior of ``target`` for one prompt, by enumerating every completion.

    Parameters
    ----------
    batch_size : int
        Prefixes per forward pass of the tree walk (memory is about T * batch_size cached rows).
    max_completions : int
        Refuse (before any work) spaces larger than this; see ``SpaceTooLargeError``.
    progress : bool
        Show a progress bar over the prefixes.
    """
    if not isinstance(prompt, str):
        raise PromptError(f"exact_posterior takes one prompt (a str), got {type(prompt).__name__}; "
                          "call it once per prompt")
    T = target.max_new_tokens
    check_space(target.prior, T, max_completions)
    target.check_prompt(prompt)  # prompt errors before any work
    ids, mask, prior_lp = enumerate_completions(target.prior, prompt, T, batch_size=batch_size,
                                                max_completions=max_completions, progress=progress)
    rewards = torch.cat([target.rewards(prompt, ids[s: s + reward_batch_size], mask[s: s + reward_batch_size])
                         for s in range(0, ids.shape[0], reward_batch_size)])
    return ExactPosterior(prompt, ids, mask, prior_lp, rewards, float(target.beta), target.prior)
