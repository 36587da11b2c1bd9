"""Vocabulary: a tokenizer with its size, EOS and pad id, and nothing of the model.

What a result needs to turn completion ids back into text (and texts into ids) without holding
the model that produced them: ``ExactPosterior`` and ``WeightedSamples`` keep one, ``CausalLM``
owns one (``lm.vocabulary``), and a run directory is read back into one. Completions follow the
semantics of ``CausalLM``: a completion ends at its first EOS (kept) or after T tokens::

    vocab.encode_prompt("the movie was")         # prompt ids, as CausalLM.encode_prompt gives them
    ids, mask = vocab.encode(["great fun"], T)    # LongTensor [n, T], BoolTensor [n, T]
    vocab.decode(ids, mask)                       # ["great fun"]  (EOS and padding removed)
    vocab.same_as(other)                          # same ids for every token, same EOS and size
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from bayes_rlhf.errors import ConfigError, PromptError
from bayes_rlhf.models.text import encode_known


@dataclass(frozen=True, eq=False)
class Vocabulary:
    """A tokenizer and the ids a completion table is written in.

    Attributes
    ----------
    tokenizer : transformers.PreTrainedTokenizerBase
    size : int
        Number of token ids (the model's output dimension V; may exceed the tokenizer's length).
    eos_token_id : int or None
        The id that ends a completion (None: completions always run to T tokens).
    pad_id : int
        The id written after a completion's end.
    """

    tokenizer: object
    size: int
    eos_token_id: int | None
    pad_id: int

    def encode_prompt(self, prompt: str) -> list[int]:
        """Prompt token ids with the tokenizer's own defaults (BOS if it adds one; BOS alone for "").

        The ids ``CausalLM.encode_prompt`` gives with the same tokenizer, so a result read back
        without its model (``load_run``) conditions on the same prompt. PromptError for a non-str,
        for unknown words, and for an empty prompt when the tokenizer has no BOS.
        """
        if not isinstance(prompt, str):
            raise PromptError(f"a prompt must be a str, got {type(prompt).__name__}")
        ids = encode_known(self.tokenizer, prompt, add_special_tokens=True, what="prompt")
        if not ids:
            bos = self.tokenizer.bos_token_id
            if bos is None:
                raise PromptError("the prompt is empty and this tokenizer has no BOS token to start "
                                  "from; give a non-empty prompt")
            ids = [bos]
        return ids

    def encode(self, texts: Sequence[str], max_new_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenise completion texts (no special tokens), cut at the first EOS or T tokens.

        Returns ids LongTensor [n, T] and mask BoolTensor [n, T]; PromptError for words the
        tokenizer does not know.
        """
        rows = [encode_known(self.tokenizer, t, add_special_tokens=False, what="completion") for t in texts]
        return self.pad(rows, max_new_tokens)

    def pad(self, rows: Sequence[Sequence[int]], max_new_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token-id rows as completions: cut after the first EOS or at T, padded with ``pad_id``.

        Returns ids LongTensor [n, T] and mask BoolTensor [n, T].
        """
        ids = torch.full((len(rows), max_new_tokens), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), max_new_tokens), dtype=torch.bool)
        for i, row in enumerate(rows):
            row = list(row)
            if self.eos_token_id in row:
                row = row[: row.index(self.eos_token_id) + 1]
            row = row[:max_new_tokens]
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = True
        return ids, mask

    def decode(self, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
        """Completion texts [n] of ids [n, T] and mask [n, T] (EOS and padding removed)."""
        out = []
        for row, m in zip(ids.tolist(), mask.tolist()):
            toks = [t for t, keep in zip(row, m) if keep and t != self.eos_token_id]
            out.append(self.tokenizer.decode(toks, skip_special_tokens=True))
        return out

    def same_as(self, other: "Vocabulary") -> bool:
        """True when ``other`` maps every token to the same id and has the same EOS and size."""
        if not isinstance(other, Vocabulary):
            return False
        if other.tokenizer is self.tokenizer:  # one tokenizer object: the same ids
            return True
        return (self.eos_token_id == other.eos_token_id and self.size == other.size
                and self.tokenizer.get_vocab() == other.tokenizer.get_vocab())

    def as_dict(self) -> dict:
        """The ids as plain values (what a run directory records beside the saved tokenizer)."""
        return {"vocab_size": int(self.size), "eos_token_id": self.eos_token_id, "pad_id": int(self.pad_id)}


def as_vocabulary(obj, what: str = "vocabulary") -> Vocabulary:
    """``obj`` as a Vocabulary: a Vocabulary as it is, a model (``CausalLM``) as its ``vocabulary``.

    The one place a result that keeps only a vocabulary takes a model instead (``WeightedSamples``).
    ConfigError naming ``what`` for anything else.
    """
    if isinstance(obj, Vocabulary):
        return obj
    vocabulary = getattr(obj, "vocabulary", None)
    if isinstance(vocabulary, Vocabulary):
        return vocabulary
    raise ConfigError(f"{what} must be a Vocabulary or a CausalLM (whose .vocabulary is kept), got "
                      f"{type(obj).__name__}")
