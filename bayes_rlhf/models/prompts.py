"""Text <-> token ids for ``CausalLM`` (a mixin: the tokenizer side of the model wrapper).

    lm.encode_prompt(prompt)             prompt ids with the tokenizer's defaults (BOS if it adds one)
    lm.check_prompt(prompt, T)           the same, refused when prompt + T positions pass the context
    lm._prompt_batch(prompts)            left-padded ids [m, P] and attention mask [m, P]
    lm.encode_completions(texts, T)      completions as ids, mask [n, T] (cut at EOS or T tokens)
    lm.decode(ids, mask)                 completion texts

The class using it sets ``tokenizer``, ``vocab_size``, ``eos_token_id``, ``pad_id``, ``device``, ``model``.
"""

from __future__ import annotations

from typing import Sequence

import torch

from bayes_rlhf.errors import PromptError
from bayes_rlhf.models.text import short
from bayes_rlhf.models.vocabulary import Vocabulary


class TextIds:
    """Prompt and completion encoding shared by ``CausalLM``'s primitives."""

    @property
    def vocabulary(self) -> Vocabulary:
        """The tokenizer with this model's size, EOS and pad id (what results keep to decode text)."""
        return Vocabulary(self.tokenizer, self.vocab_size, self.eos_token_id, self.pad_id)

    def same_tokenizer(self, other: "TextIds") -> bool:
        """True when ``other`` maps every token to the same id and has the same EOS."""
        return self.vocabulary.same_as(other.vocabulary)

    def encode_prompt(self, prompt: str) -> list[int]:
        """Prompt token ids with the tokenizer's own defaults (BOS if it adds one; ``Vocabulary.encode_prompt``)."""
        return self.vocabulary.encode_prompt(prompt)

    def encode_completions(self, texts: Sequence[str], max_new_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenise completion texts (no special tokens), cut at the first EOS or T tokens.

        Returns ids LongTensor [n, T] and mask BoolTensor [n, T].
        """
        return self.vocabulary.encode(texts, max_new_tokens)

    @property
    def context_length(self) -> int | None:
        """The most positions the model takes (prompt + completion), from its config; None if unknown."""
        config = self.model.config
        for name in ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length", "seq_length"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def check_prompt(self, prompt: str, max_new_tokens: int) -> list[int]:
        """``encode_prompt(prompt)``, refused (PromptError) when prompt + ``max_new_tokens`` tokens
        would run past the model's context, since positions past it are not what the model learnt."""
        ids = self.encode_prompt(prompt)
        n_ctx = self.context_length
        if n_ctx is not None and len(ids) + max_new_tokens > n_ctx:
            room = n_ctx - len(ids)
            if room >= 1:
                fix = f"Shorten the prompt or lower max_new_tokens to at most {room}"
            elif max_new_tokens < n_ctx:  # not even one new token fits after this prompt
                keep = n_ctx - max_new_tokens
                fix = f"Shorten the prompt to at most {keep} token{'s' if keep > 1 else ''}"
            else:
                fix = f"Lower max_new_tokens below {n_ctx} and shorten the prompt to fit"
            raise PromptError(
                f"prompt {short(prompt)} is {len(ids)} tokens; with max_new_tokens={max_new_tokens} that is "
                f"{len(ids) + max_new_tokens} positions, past this model's context of {n_ctx}. {fix}")
        return ids

    def _pad_rows(self, rows: list[list[int]], T: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vocabulary.pad(rows, T)

    def decode(self, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
        """Completion texts (EOS and padding removed)."""
        return self.vocabulary.decode(ids, mask)

    def _prompt_batch(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompt ids [m, P] and attention mask [m, P]."""
        encoded: dict[str, list[int]] = {}
        rows = [encoded[p] if p in encoded else encoded.setdefault(p, self.encode_prompt(p)) for p in prompts]
        P = max(len(r) for r in rows)
        if len(encoded) == 1:  # one prompt for every row: no per-row work
            ids = torch.tensor(rows[0], dtype=torch.long).expand(len(rows), P)
            return ids.to(self.device), torch.ones((len(rows), P), dtype=torch.long, device=self.device)
        ids = torch.full((len(rows), P), self.pad_id, dtype=torch.long)
        att = torch.zeros((len(rows), P), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, P - len(r):] = torch.tensor(r, dtype=torch.long)
            att[i, P - len(r):] = 1
        return ids.to(self.device), att.to(self.device)

    @staticmethod
    def _as_prompt_list(prompts: str | Sequence[str]) -> list[str]:
        return [prompts] if isinstance(prompts, str) else list(prompts)
