"""CausalLM: any transformers causal LM and its tokenizer, with the primitives the toolkit shares.

Completion semantics are those of ``generate(max_new_tokens=T)``: a completion ends at its
first EOS (the EOS is part of it) or after T tokens. Completions travel as LongTensor [n, T]
padded with ``pad_id`` and a BoolTensor mask [n, T].

Primitives::

    state, logp = lm.start(prompt, n)      # prompt forward once, cache repeated to n rows
    state, logp = lm.step(state, tokens)   # one token per row; logp: [n, V] next-token log-probs
    state = state.reindex(idx)             # rows idx of the cache (repeats allowed), no recompute
    lm.score(prompt, ids, mask)            # [n, T] per-token log-probs of given completions
    lm.sample(prompt, n, T, generator)     # ancestral sampling over the same step primitive

``top_k`` optionally truncates the prior to its k most likely tokens at every step (renormalised),
so that a real LM's posterior can be enumerated exactly over the truncated support.
"""

from __future__ import annotations

import copy
import inspect
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from safetensors import SafetensorError

from bayes_rlhf.errors import ConfigError, ModelLoadError, PromptError
from bayes_rlhf.models.completions import Completions


def _select_cache(cache, idx: torch.Tensor):
    """A new cache holding rows ``idx`` of ``cache``; the input cache is left untouched."""
    new = copy.copy(cache)
    new.layers = [copy.copy(layer) for layer in cache.layers]
    new.reorder_cache(idx)
    return new


def _fork_cache(cache):
    """A shallow copy that a forward pass may extend without changing ``cache``."""
    new = copy.copy(cache)
    new.layers = [copy.copy(layer) for layer in cache.layers]
    return new


@dataclass(frozen=True)
class LMState:
    """The state of n partial sequences: KV cache, attention mask [n, L], next positions [n]."""

    cache: object
    attention_mask: torch.Tensor
    positions: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.attention_mask.shape[0]

    def reindex(self, idx: torch.Tensor) -> "LMState":
        """Rows ``idx`` (LongTensor [m], repeats allowed) as a new state; no recomputation."""
        idx = idx.to(self.attention_mask.device)
        return LMState(_select_cache(self.cache, idx), self.attention_mask[idx], self.positions[idx])


class CausalLM:
    """A causal language model with its tokenizer, device, dtype and optional top-k truncation.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        Any causal LM (``AutoModelForCausalLM``). Put in eval mode; gradients stay enabled only
        through the methods that ask for them.
    tokenizer : transformers.PreTrainedTokenizerBase
    device, dtype : optional
        Where and in what precision to run. Defaults: CUDA when available, the model's dtype.
    top_k : int, optional
        Truncate every next-token distribution to its k most likely tokens (renormalised).
    """

    def __init__(self, model, tokenizer, *, device=None, dtype=None, top_k: int | None = None):
        if top_k is not None and top_k < 1:
            raise ConfigError(f"top_k must be >= 1 or None, got {top_k}")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
        self.model.eval()
        self.tokenizer = tokenizer
        self.top_k = top_k
        self.device = torch.device(device)
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        eos = tokenizer.eos_token_id
        if eos is None:
            eos = getattr(self.model.config, "eos_token_id", None)
            eos = eos[0] if isinstance(eos, (list, tuple)) else eos
        self.eos_token_id: int | None = eos if eos is None or eos < self.vocab_size else None
        pad = tokenizer.pad_token_id
        self.pad_id: int = pad if pad is not None else (self.eos_token_id if self.eos_token_id is not None else 0)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, device=None, dtype=None,
                        top_k: int | None = None, trust_remote_code: bool = False, **kwargs) -> "CausalLM":
        """Load a model and tokenizer from a local directory or a hub id.

        ``trust_remote_code`` stays off unless you pass True. Extra keyword arguments go to
        ``AutoModelForCausalLM.from_pretrained`` (e.g. ``gguf_file=...``).
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        name = str(name_or_path)
        looks_local = os.path.sep in name or name.startswith(".") or Path(name).suffix != ""
        if looks_local and not Path(name).exists():
            raise ModelLoadError(f"model path {name!r} does not exist; give an existing directory "
                                 "holding config.json and weights, or a hub id such as 'gpt2'")
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        if Path(name).is_dir():
            _check_weight_files(Path(name), kwargs.get("gguf_file"))
        if "gguf_file" not in kwargs:
            kwargs.setdefault("use_safetensors", True)  # never unpickle weights
        tok_kwargs = {k: v for k, v in kwargs.items() if k == "gguf_file"}
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code, **tok_kwargs)
            model = AutoModelForCausalLM.from_pretrained(
                name, trust_remote_code=trust_remote_code, dtype=dtype, **kwargs)
        except (OSError, ValueError, RuntimeError, KeyError, pickle.UnpicklingError, SafetensorError) as exc:
            raise ModelLoadError(f"could not load a causal LM from {name!r}: {type(exc).__name__}: {exc}. "
                                 "Give a local directory with config.json, safetensors weights and tokenizer "
                                 "files (a truncated or corrupted model.safetensors reads as a header error: "
                                 "save it again), or a hub id that is cached when offline") from exc
        return cls(model, tokenizer, device=device, dtype=dtype, top_k=top_k)

    def with_top_k(self, top_k: int | None) -> "CausalLM":
        """The same model and tokenizer with another truncation (shares weights)."""
        return CausalLM(self.model, self.tokenizer, device=self.device, top_k=top_k)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write model (safetensors) and tokenizer atomically to ``directory``."""
        from bayes_rlhf.io import atomic_dir

        with atomic_dir(directory) as tmp:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
        directory = Path(directory)
        return directory

    def same_tokenizer(self, other: "CausalLM") -> bool:
        """True when ``other`` maps every token to the same id and has the same EOS."""
        if other.tokenizer is self.tokenizer:
            return True
        return (self.eos_token_id == other.eos_token_id and self.vocab_size == other.vocab_size
                and self.tokenizer.get_vocab() == other.tokenizer.get_vocab())

    # ------------------------------------------------------------------ text <-> ids
    def encode_prompt(self, prompt: str) -> list[int]:
        """Prompt token ids with the tokenizer's own defaults (BOS if it adds one)."""
        if not isinstance(prompt, str):
            raise PromptError(f"a prompt must be a str, got {type(prompt).__name__}")
        ids = self._encode_known(prompt, add_special_tokens=True, what="prompt")
        if not ids:
            bos = self.tokenizer.bos_token_id
            if bos is None:
                raise PromptError("the prompt is empty and this tokenizer has no BOS token to start "
                                  "from; give a non-empty prompt")
            ids = [bos]
        return ids

    def encode_completions(self, texts: Sequence[str], max_new_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenise completion texts (no special tokens), cut at the first EOS or T tokens.

        Returns ids LongTensor [n, T] and mask BoolTensor [n, T].
        """
        rows = [self._encode_known(t, add_special_tokens=False, what="completion") for t in texts]
        return self._pad_rows(rows, max_new_tokens)

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
            raise PromptError(
                f"prompt {_short(prompt)} is {len(ids)} tokens; with max_new_tokens={max_new_tokens} that is "
                f"{len(ids) + max_new_tokens} positions, past this model's context of {n_ctx}. Shorten the "
                f"prompt or lower max_new_tokens to at most {max(n_ctx - len(ids), 0)}")
        return ids

    def _encode_known(self, text: str, *, add_special_tokens: bool, what: str) -> list[int]:
        """Token ids of ``text``; PromptError naming the words the tokenizer maps to its unknown token
        (encoding them as <unk> would silently condition on another text)."""
        unk = self.tokenizer.unk_token_id
        ids = list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])
        if unk is None or unk not in ids:
            return ids
        words = [w for w in _unknown_words(self.tokenizer, text, unk) if w != self.tokenizer.unk_token]
        if not words:  # the text spells the unknown (or padding) token itself
            return ids
        raise PromptError(f"the {what} {_short(text)} has word(s) this tokenizer does not know: "
                          f"{', '.join(repr(w) for w in words)} (they would be read as "
                          f"{self.tokenizer.unk_token!r}); use words from the model's vocabulary "
                          "(check case and spelling)")

    def _pad_rows(self, rows: list[list[int]], T: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.full((len(rows), T), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.bool)
        for i, row in enumerate(rows):
            if self.eos_token_id in row:
                row = row[: row.index(self.eos_token_id) + 1]
            row = row[:T]
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = True
        return ids, mask

    def decode(self, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
        """Completion texts (EOS and padding removed)."""
        out = []
        for row, m in zip(ids.tolist(), mask.tolist()):
            toks = [t for t, keep in zip(row, m) if keep and t != self.eos_token_id]
            out.append(self.tokenizer.decode(toks, skip_special_tokens=True))
        return out

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

    # ------------------------------------------------------------------ distributions
    def log_softmax(self, logits: torch.Tensor) -> torch.Tensor:
        """Next-token log-probs [..., V] from logits, in >= float32, with top-k truncation."""
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        if self.top_k is not None and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.log_softmax(logits, dim=-1)

    def _forward(self, input_ids, attention_mask, position_ids, cache=None):
        return forward_with_cache(self.model, input_ids, attention_mask, position_ids, cache)

    @staticmethod
    def _as_prompt_list(prompts: str | Sequence[str]) -> list[str]:
        return [prompts] if isinstance(prompts, str) else list(prompts)

    def start(self, prompts: str | Sequence[str], num_per_prompt: int = 1) -> tuple[LMState, torch.Tensor]:
        """Run the prompt(s) once; return a state of ``len(prompts) * num_per_prompt`` rows.

        Rows are grouped by prompt (row i continues prompt ``i // num_per_prompt``).
        Returns the state and next-token log-probs [n, V].
        """
        prompts = self._as_prompt_list(prompts)
        ids, att = self._prompt_batch(prompts)
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits, cache = self._forward(ids, att, pos)
        state = LMState(cache, att, pos[:, -1] + 1)
        logp = self.log_softmax(logits)
        if num_per_prompt != 1:
            idx = torch.arange(len(prompts), device=self.device).repeat_interleave(num_per_prompt)
            state, logp = state.reindex(idx), logp[idx]
        return state, logp

    def step(self, state: LMState, tokens: torch.Tensor) -> tuple[LMState, torch.Tensor]:
        """Append one token per row (LongTensor [n]); return the new state and log-probs [n, V].

        The input state is not changed.
        """
        tokens = tokens.to(self.device).view(-1, 1)
        att = torch.cat([state.attention_mask, state.attention_mask.new_ones(tokens.shape[0], 1)], dim=1)
        with torch.no_grad():
            logits, cache = self._forward(tokens, att, state.positions.view(-1, 1), _fork_cache(state.cache))
        return LMState(cache, att, state.positions + 1), self.log_softmax(logits)

    # ------------------------------------------------------------------ scoring and sampling
    def token_log_probs(self, prompts: str | Sequence[str], ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-token log-probs [n, T] of completions (0 at padding), differentiable.

        ``prompts`` is one prompt for every row or a list of n prompts.
        """
        n, T = ids.shape
        plist = self._as_prompt_list(prompts)
        if len(plist) == 1 and n != 1:
            plist = plist * n
        p_ids, p_att = self._prompt_batch(plist)
        ids, mask = ids.to(self.device), mask.to(self.device)
        full = torch.cat([p_ids, ids], dim=1)
        att = torch.cat([p_att, mask.long()], dim=1)
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(input_ids=full, attention_mask=att, position_ids=pos, use_cache=False).logits
        P = p_ids.shape[1]
        logp = self.log_softmax(logits[:, P - 1: P - 1 + T])
        tok = logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        return tok.masked_fill(~mask, 0.0)

    def score(self, prompts: str | Sequence[str], ids: torch.Tensor, mask: torch.Tensor,
              batch_size: int = 256) -> torch.Tensor:
        """Per-token log-probs [n, T] of completions (0 at padding), in batches, without grad.

        Sum over the last dimension for each completion's total log-prob.
        """
        plist = self._as_prompt_list(prompts)
        out = []
        with torch.no_grad():
            for s in range(0, ids.shape[0], batch_size):
                sub = plist if len(plist) == 1 else plist[s: s + batch_size]
                out.append(self.token_log_probs(sub, ids[s: s + batch_size], mask[s: s + batch_size]))
        return torch.cat(out) if out else torch.zeros(ids.shape, device=self.device)

    def score_texts(self, prompts: str | Sequence[str], completions: Sequence[str], max_new_tokens: int) -> torch.Tensor:
        """Total log-probs [n] of completion texts (tokenised as in ``encode_completions``)."""
        ids, mask = self.encode_completions(completions, max_new_tokens)
        return self.score(prompts, ids, mask).sum(-1)

    def sample(self, prompts: str | Sequence[str], num_samples: int, max_new_tokens: int,
               generator: torch.Generator | None = None) -> Completions:
        """Ancestral samples: ``num_samples`` completions per prompt, grouped by prompt.

        Randomness comes only from ``generator`` (a CPU generator works for any device).
        """
        if num_samples < 1 or max_new_tokens < 1:
            raise ConfigError(f"num_samples and max_new_tokens must be >= 1, got {num_samples}, {max_new_tokens}")
        plist = self._as_prompt_list(prompts)
        state, logp = self.start(plist, num_samples)
        n = state.batch_size
        ids = torch.full((n, max_new_tokens), self.pad_id, dtype=torch.long, device=self.device)
        mask = torch.zeros((n, max_new_tokens), dtype=torch.bool, device=self.device)
        total = torch.zeros(n, dtype=logp.dtype, device=self.device)
        alive = torch.ones(n, dtype=torch.bool, device=self.device)
        for t in range(max_new_tokens):
            tok = sample_categorical(logp, generator)
            ids[:, t] = torch.where(alive, tok, ids[:, t])
            mask[:, t] = alive
            total = total + torch.where(alive, logp.gather(-1, tok[:, None]).squeeze(-1), 0.0)
            if self.eos_token_id is not None:
                alive = alive & (tok != self.eos_token_id)
            if t + 1 < max_new_tokens and alive.any():
                state, logp = self.step(state, tok)
            else:
                break
        prompt_index = torch.arange(len(plist)).repeat_interleave(num_samples)
        return Completions(ids.cpu(), mask.cpu(), total.cpu(), prompt_index)


_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def _check_weight_files(directory: Path, gguf_file: str | None) -> None:
    """Refuse, before loading anything, a directory whose weights exist only as pickles: unpickling
    can execute code, so only safetensors (or a GGUF file given by name) are read."""
    if gguf_file is not None or any(directory.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise ModelLoadError(
            f"{str(directory)!r} holds weights only as pickle files ({', '.join(pickles)}); bayes_rlhf "
            "reads safetensors only, because loading a pickle can run arbitrary code. If you trust the "
            "file, convert it once: AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir) "
            "writes model.safetensors")


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _unknown_words(tokenizer, text: str, unk: int) -> list[str]:
    """The pieces of ``text`` that encode to ``unk``: by character offsets with a fast tokenizer,
    else word by word."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        spans = [text[a:b] for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]) if i == unk and b > a]
    except (NotImplementedError, ValueError, TypeError):
        spans = []
    if not spans:
        spans = [w for w in text.split() if unk in tokenizer(w, add_special_tokens=False)["input_ids"]]
    seen: dict[str, None] = {}
    for w in spans:
        seen.setdefault(w.strip() or w, None)
    return list(seen) or [text]


def cache_argument(model) -> str:
    """The name under which ``model``'s forward takes a KV cache: ``cache`` (transformers >= 5.24)
    or ``past_key_values`` (older 5.x, removed in 5.40). Read once from the forward's signature."""
    forward = type(model).forward
    name = _CACHE_ARGUMENT.get(forward)
    if name is None:
        inner = model
        while True:  # peft and DDP wrappers take **kwargs: read the wrapped model's signature
            if hasattr(inner, "get_base_model"):
                inner = inner.get_base_model()
            elif isinstance(getattr(inner, "module", None), torch.nn.Module):
                inner = inner.module
            else:
                break
        params = inspect.signature(type(inner).forward).parameters
        name = "cache" if "cache" in params else "past_key_values"
        _CACHE_ARGUMENT[forward] = name
    return name


_CACHE_ARGUMENT: dict = {}


def forward_with_cache(model, input_ids, attention_mask, position_ids, cache=None):
    """One cached forward of any transformers causal LM: last-position logits [n, V] and the cache.

    Passes the cache under the argument name the installed transformers supports (see
    ``cache_argument``) and reads it back from the output under either name.
    """
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                use_cache=True, **{cache_argument(model): cache})
    new_cache = out["cache"] if "cache" in out else out["past_key_values"]
    return out.logits[:, -1], new_cache


def sample_categorical(log_probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row from log-probs [n, V] by inverse CDF with uniforms from ``generator``."""
    probs = torch.exp(log_probs.double())
    cdf = probs.cumsum(-1)
    u = torch.rand(probs.shape[0], 1, generator=generator, dtype=torch.float64).to(probs.device)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:]).squeeze(-1)
    # guard against landing on a zero-probability token at the top edge
    idx = idx.clamp(max=probs.shape[-1] - 1)
    bad = probs.gather(-1, idx[:, None]).squeeze(-1) <= 0
    if bad.any():
        idx[bad] = probs[bad].argmax(-1)
    return idx


def load_model(name_or_path: str | os.PathLike, device=None, dtype=None, top_k: int | None = None,
               trust_remote_code: bool = False, **kwargs) -> CausalLM:
    """Load a ``CausalLM`` from a local directory or hub id (see ``CausalLM.from_pretrained``)."""
    return CausalLM.from_pretrained(name_or_path, device=device, dtype=dtype, top_k=top_k,
                                    trust_remote_code=trust_remote_code, **kwargs)
