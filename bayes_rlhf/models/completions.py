"""Completions: a padded batch of completion token ids, the currency between modules."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Completions:
    """A batch of completions of one or more prompts.

    Attributes
    ----------
    ids : LongTensor [n, T]
        Completion tokens, padded after the end with the model's pad id.
    mask : BoolTensor [n, T]
        True at real tokens. A completion ends at its first EOS (kept, mask True) or at T.
    log_probs : Tensor [n]
        Log-probability of each completion under the model that produced or scored it.
    prompt_index : LongTensor [n]
        Which prompt (in the list the sampler was given) each row continues.
    source : str
        Where the rows come from: "model" (drawn from a model, the default), "exact" (exact
        posterior samples: ``ExactPosterior.sample``, ``exact_rejection_sample``) or "resampled"
        (SIR draws, only approximately posterior). ``upper_bound`` accepts "exact" only.
    support_log_probs : Tensor [n, T] or None
        Per-token log-probs (0 at padding) under the support model of a model restricted to one
        (``CausalLM(support=prior)``: the truncated prior), computed while sampling; else None.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    log_probs: torch.Tensor
    prompt_index: torch.Tensor
    source: str = "model"
    support_log_probs: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __repr__(self) -> str:
        """A one-line summary (printing every tensor would flood a notebook); the fields hold the rest."""
        n, T = self.ids.shape
        prompts = int(self.prompt_index.max()) + 1 if n else 0
        mean_len = f", mean length {float(self.lengths.double().mean()):.2f}" if n else ""
        return f"Completions({n} rows of {prompts} prompt(s), T={T}, source={self.source!r}{mean_len})"

    @property
    def lengths(self) -> torch.Tensor:
        """LongTensor [n]: number of real tokens in each completion."""
        return self.mask.sum(-1)

    def select(self, idx: torch.Tensor) -> "Completions":
        """Rows `idx` (LongTensor [m]) as a new batch."""
        support = None if self.support_log_probs is None else self.support_log_probs[idx]
        return Completions(self.ids[idx], self.mask[idx], self.log_probs[idx], self.prompt_index[idx], self.source,
                           support)
