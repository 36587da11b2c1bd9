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

Where the parts live: text <-> ids in ``prompts`` (the ``TextIds`` mixin), scoring in ``scoring``
(the LM head in row tiles: ``lm_head``), the sampling loop in ``sampling``, the KV cache in ``cache``.

Two kinds of truncation:

- ``top_k`` truncates the model's own next-token distribution to its k most likely tokens
  (renormalised), so that a real LM's posterior can be enumerated over the truncated support;
- ``support=prior`` (a CausalLM with ``top_k``) restricts this model's distribution to the
  *prior's* top-k set S(prefix) and renormalises: the semantics of a policy trained against a
  truncated target, whose completions must stay where pi0 (and so pi*) has mass. Every primitive
  then runs the prior beside the model (its state travels in ``LMState.support``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from bayes_rlhf.errors import ConfigError, TokenizerMismatchError
from bayes_rlhf.models.cache import LMState, _fork_cache, _select_cache, cache_argument, forward_with_cache
from bayes_rlhf.models.completions import Completions
from bayes_rlhf.models.linears import transposed_linears
from bayes_rlhf.models.packed import packed_repeat
from bayes_rlhf.models.sampling import sample, sample_categorical
from bayes_rlhf.models.scoring import sequence_forward
from bayes_rlhf.models.prompts import TextIds

__all__ = ["CausalLM", "LMState", "load_model", "sample_categorical", "cache_argument", "forward_with_cache",
           "_fork_cache", "_select_cache"]


class CausalLM(TextIds):
    """A causal language model with its tokenizer, device, dtype and optional truncation.

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
    support : CausalLM, optional
        A top-k model (the prior of a truncated target) whose support this model is restricted to.
    source : str, optional
        Where the weights came from (path or hub id); set by ``from_pretrained``.
    """

    def __init__(self, model, tokenizer, *, device=None, dtype=None, top_k: int | None = None,
                 support: "CausalLM | None" = None, source: str | None = None):
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ConfigError(f"top_k must be an integer >= 1 or None, got {top_k!r}")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
        self.model.eval()
        self.tokenizer = tokenizer
        self.top_k = top_k
        self.source = source
        self.device = torch.device(device)
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        eos = tokenizer.eos_token_id
        if eos is None:
            eos = getattr(self.model.config, "eos_token_id", None)
            eos = eos[0] if isinstance(eos, (list, tuple)) else eos
        self.eos_token_id: int | None = eos if eos is None or eos < self.vocab_size else None
        pad = tokenizer.pad_token_id
        self.pad_id: int = pad if pad is not None else (self.eos_token_id if self.eos_token_id is not None else 0)
        self.support = self._check_support(support)

    def _check_support(self, support):
        if support is None:
            return None
        if not isinstance(support, CausalLM) or support.top_k is None:
            raise ConfigError("support must be a CausalLM with top_k set (the truncated prior), got "
                              f"{support if not isinstance(support, CausalLM) else 'a CausalLM without top_k'}")
        if support.support is not None:
            raise ConfigError("a support model must not itself be restricted to another support")
        if not self.same_tokenizer(support):
            raise TokenizerMismatchError("the support model's tokenizer differs from this model's; restrict a "
                                         "policy to the support of the prior it was fine-tuned from")
        return support

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, device=None, dtype=None,
                        top_k: int | None = None, trust_remote_code: bool = False, support="auto",
                        **kwargs) -> "CausalLM":
        """Load a model and tokenizer from a local directory or a hub id.

        ``trust_remote_code`` stays off unless you pass True. Weights are read from safetensors
        only. ``support``: ``"auto"`` restores the support restriction a policy checkpoint records
        in ``support.json`` (loading the prior it names), a CausalLM restricts to that model's
        top-k support, None loads the plain model. Extra keyword arguments go to
        ``AutoModelForCausalLM.from_pretrained`` (e.g. ``gguf_file=...``).
        """
        from bayes_rlhf.models.loading import as_dtype, load_pretrained, own_aligned, read_support, support_prior

        name = str(name_or_path)
        dtype = as_dtype(dtype)
        record = read_support(Path(name)) if support == "auto" and Path(name).is_dir() else None
        tokenizer, model = load_pretrained(name, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs)
        if support == "auto":
            support = None if record is None else support_prior(record, name, device, dtype)
        lm = cls(model, tokenizer, device=device, dtype=dtype, top_k=top_k, support=support, source=name)
        own_aligned(lm.model)  # what stayed on the CPU leaves the memory map: bit-for-bit reloads
        return lm

    def with_top_k(self, top_k: int | None) -> "CausalLM":
        """The same model and tokenizer with another truncation (shares weights)."""
        return CausalLM(self.model, self.tokenizer, device=self.device, top_k=top_k, support=self.support,
                        source=self.source)

    def with_support(self, support: "CausalLM | None") -> "CausalLM":
        """The same model restricted to ``support``'s top-k support (None: unrestricted); shares weights."""
        return CausalLM(self.model, self.tokenizer, device=self.device, top_k=self.top_k, support=support,
                        source=self.source)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write model (safetensors) and tokenizer atomically to ``directory``; with a support
        restriction also ``support.json`` naming the prior and k (see ``bayes_rlhf.models.loading``).
        An earlier checkpoint there is replaced; a folder holding other files, a file, the working
        directory or the support's prior is refused (OutputDirError) before anything is written."""
        from bayes_rlhf.io import atomic_dir
        from bayes_rlhf.models.loading import check_save_dir, write_support

        check_save_dir(directory, self)  # a file, a folder of other files, the support's prior: refused
        with atomic_dir(directory) as tmp:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            if self.support is not None:
                write_support(tmp, self)
        return Path(directory)

    # ------------------------------------------------------------------ distributions
    def log_softmax(self, logits: torch.Tensor, support_log_probs: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token log-probs [..., V] from logits, in >= float32, with top-k truncation and,
        given the support model's log-probs [..., V], restricted to where they are finite."""
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        if self.top_k is not None and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if support_log_probs is not None:
            logits = logits.masked_fill(~torch.isfinite(support_log_probs), float("-inf"))
        return torch.log_softmax(logits, dim=-1)

    def _forward(self, input_ids, attention_mask, position_ids, cache=None):
        with transposed_linears(self.model, input_ids.numel()):  # small no-grad CPU batches: x @ Wt
            return forward_with_cache(self.model, input_ids, attention_mask, position_ids, cache)

    def start(self, prompts: str | Sequence[str], num_per_prompt: int = 1) -> tuple[LMState, torch.Tensor]:
        """Run the prompt(s) once; return a state of ``len(prompts) * num_per_prompt`` rows.

        Rows are grouped by prompt (row i continues prompt ``i // num_per_prompt``).
        Returns the state and next-token log-probs [n, V].
        """
        return self._start(prompts, num_per_prompt)[:2]

    def step(self, state: LMState, tokens: torch.Tensor) -> tuple[LMState, torch.Tensor]:
        """Append one token per row (LongTensor [n]); return the new state and log-probs [n, V].

        The input state is not changed.
        """
        return self._step(state, tokens)[:2]

    def _start(self, prompts, num_per_prompt: int = 1):
        """``start``, and the support model's next-token log-probs [n, V] (None without a support)."""
        prompts = self._as_prompt_list(prompts)
        ids, att = self._prompt_batch(prompts)
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            with packed_repeat(self.model, ids.numel()):  # a prompt run again: from packed weights
                logits, cache = self._forward(ids, att, pos)
        support, support_lp = self.support.start(prompts) if self.support is not None else (None, None)
        state = LMState(cache, att, pos[:, -1] + 1, support)
        logp = self.log_softmax(logits, support_lp)
        if num_per_prompt != 1:
            idx = torch.arange(len(prompts), device=self.device).repeat_interleave(num_per_prompt)
            state, logp = state.reindex(idx), logp[idx]
            support_lp = None if support_lp is None else support_lp[idx]
        return state, logp, support_lp

    def _step(self, state: LMState, tokens: torch.Tensor):
        """``step``, and the support model's next-token log-probs [n, V] (None without a support)."""
        tokens = tokens.to(self.device).view(-1, 1)
        att = torch.cat([state.attention_mask, state.attention_mask.new_ones(tokens.shape[0], 1)], dim=1)
        with torch.no_grad():
            logits, cache = self._forward(tokens, att, state.positions.view(-1, 1), _fork_cache(state.cache))
        support, support_lp = (self.support.step(state.support, tokens.view(-1)) if self.support is not None
                               else (None, None))
        return LMState(cache, att, state.positions + 1, support), self.log_softmax(logits, support_lp), support_lp

    # ------------------------------------------------------------------ scoring and sampling
    def sequence_forward(self, prompts: str | Sequence[str], ids: torch.Tensor, mask: torch.Tensor, *,
                         model: torch.nn.Module | None = None, hidden_states: bool = False):
        """One differentiable pass over prompt + completion (``bayes_rlhf.models.scoring``).

        Returns per-token log-probs [n, T] (0 at padding) and, with ``hidden_states``, the last
        hidden state at the positions that predict each completion token [n, T, H] (else None).
        ``prompts`` is one prompt for every row or a list of n prompts; ``model`` replaces
        ``self.model`` in the pass (e.g. accelerate's wrapped module). With a support restriction the
        support model is run too (without gradient) and its top-k sets mask the logits.
        """
        return sequence_forward(self, prompts, ids, mask, model=model, hidden_states=hidden_states)

    def token_log_probs(self, prompts: str | Sequence[str], ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-token log-probs [n, T] of completions (0 at padding), differentiable.

        ``prompts`` is one prompt for every row or a list of n prompts.
        """
        return self.sequence_forward(prompts, ids, mask)[0]

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

    def sample(self, prompts: str | Sequence[str], num_samples: int, max_new_tokens: int, *,
               generator: torch.Generator | None = None) -> Completions:
        """Ancestral samples: ``num_samples`` completions per prompt, grouped by prompt.

        Randomness comes only from ``generator`` (a CPU generator works for any device). With a support
        restriction the support model's per-token log-probs come along (``support_log_probs``).
        """
        return sample(self, prompts, num_samples, max_new_tokens, generator=generator)


def load_model(name_or_path: str | os.PathLike, device=None, dtype=None, top_k: int | None = None,
               trust_remote_code: bool = False, support="auto", **kwargs) -> CausalLM:
    """Load a ``CausalLM`` from a local directory or hub id (see ``CausalLM.from_pretrained``)."""
    return CausalLM.from_pretrained(name_or_path, device=device, dtype=dtype, top_k=top_k,
                                    trust_remote_code=trust_remote_code, support=support, **kwargs)
