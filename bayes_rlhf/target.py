"""Target: the unnormalised posterior pi*(x | c) ∝ pi0(x | c) exp(r(c, x) / beta).

``log_density = log pi0(x | c) + r(c, x) / beta``; its normaliser is Z(c) and
``beta * log Z(c)`` is the optimum of the KL-regularised RL objective E_q[r] - beta KL(q || pi0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from bayes_rlhf._checks import check_int, check_real
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.models.causal_lm import CausalLM
from bayes_rlhf.rewards.base import evaluate_reward


@dataclass(frozen=True)
class Target:
    """The posterior of a prior LM tilted by a reward.

    Parameters
    ----------
    prior : CausalLM
        pi0 (with its top-k truncation, if any).
    reward : reward
        A text reward ``f(prompts, completions)`` or a token reward (see ``bayes_rlhf.rewards``).
    beta : float
        KL coefficient (temperature), > 0 and finite.
    max_new_tokens : int
        T >= 1; a completion ends at its first EOS or after T tokens.
    """

    prior: CausalLM
    reward: object
    beta: float
    max_new_tokens: int

    def __post_init__(self):
        if not isinstance(self.prior, CausalLM):
            raise ConfigError(f"Target.prior must be a CausalLM, got {type(self.prior).__name__}; "
                              "wrap a transformers model with bayes_rlhf.CausalLM(model, tokenizer)")
        if not callable(self.reward) and not hasattr(self.reward, "score_batch"):
            raise ConfigError("Target.reward must be f(prompts, completions) or a TokenReward")
        # numpy numbers are accepted and stored as the Python numbers they hold
        object.__setattr__(self, "beta", check_real(self.beta, "beta", low=0.0, low_open=True))
        object.__setattr__(self, "max_new_tokens", check_int(self.max_new_tokens, "max_new_tokens", 1))

    def check_prompt(self, prompt: str) -> list[int]:
        """The prompt's token ids; PromptError if the prior cannot read it faithfully (unknown words)
        or prompt + ``max_new_tokens`` runs past the prior's context."""
        return self.prior.check_prompt(prompt, self.max_new_tokens)

    def rewards(self, prompts: str | Sequence[str], ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Checked rewards (float64 [n]) of completions; ``prompts`` is one prompt or one per row."""
        plist = [prompts] * ids.shape[0] if isinstance(prompts, str) else list(prompts)
        return evaluate_reward(self.reward, self.prior, plist, ids, mask)

    def log_density(self, prompts: str | Sequence[str], ids: torch.Tensor, mask: torch.Tensor,
                    prior_log_probs: torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised log posterior log pi0 + r / beta (float64 [n])."""
        if prior_log_probs is None:
            prior_log_probs = self.prior.score(prompts, ids, mask).sum(-1)
        return prior_log_probs.double().cpu() + self.rewards(prompts, ids, mask) / self.beta
