"""Ancestral sampling over ``CausalLM.start`` / ``step``, and the categorical draw it uses.

    state, logp = lm.start(prompts, n)                 # prompt forward once, cache repeated
    for t in 1..T:  x_t ~ logp (inverse CDF, uniforms from the generator)
                    total += logp[x_t] while the row is alive; a row dies after its EOS
                    state, logp = lm.step(state, x_t)  # unless t = T or every row is done

A model restricted to a support (``CausalLM(support=prior)``) runs the prior beside it anyway; its
log-probs of the drawn tokens are kept per token (``Completions.support_log_probs``), so that a
rollout against that truncated prior need not score the draws again.

The whole loop runs inside ``packed_linears`` (``bayes_rlhf.models.packed``): on CPU the n-row
one-token forwards (4 <= n <= 64) compute from MKL-packed float32 weights (the same products, rounded alike up
to float32 rounding order; SmolLM2 16 tokens x 8 rows: 2.25 s -> 1.68 s of CPU).
"""

from __future__ import annotations

from typing import Sequence

import torch

from bayes_rlhf.errors import ConfigError
from bayes_rlhf.models.completions import Completions
from bayes_rlhf.models.linears import MAX_ROWS
from bayes_rlhf.models.packed import available as packed_available, packed_linears, packed_lm, plain_lora


def sample(lm, prompts: str | Sequence[str], num_samples: int, max_new_tokens: int, *,
           generator: torch.Generator | None = None) -> Completions:
    """``num_samples`` completions per prompt of ``lm``, grouped by prompt (see ``CausalLM.sample``)."""
    if num_samples < 1 or max_new_tokens < 1:
        raise ConfigError(f"num_samples and max_new_tokens must be >= 1, got {num_samples}, {max_new_tokens}")
    plist = lm._as_prompt_list(prompts)
    n = len(plist) * num_samples
    with packed_lm(lm, n):  # the n-row one-token forwards from MKL-packed weights (CPU)
        ids, mask, total, support_tok = _draw(lm, plist, num_samples, max_new_tokens, generator)
    return _completions(plist, num_samples, ids, mask, total, support_tok)


def rides_along(lm, rows: int) -> bool:
    """True when ``sample_with_base`` can sample ``rows`` completions of ``lm``: an untruncated CPU
    LoRA model (every LoRA layer plain, float32) with MKL's packed operators and 2 x rows <= MAX_ROWS."""
    return (lm.top_k is None and lm.support is None and lm.device.type == "cpu" and 2 * rows <= MAX_ROWS
            and packed_available() and plain_lora(lm.model))


def sample_with_base(lm, prompts: str | Sequence[str], num_samples: int, max_new_tokens: int, *,
                     generator: torch.Generator | None = None) -> tuple[Completions, torch.Tensor]:
    """``sample`` of a LoRA model, and the per-token log-probs [n, T] (0 at padding) of the draws under
    its base (adapters off), computed in the same forwards: each one-token step runs 2n rows, the
    second n through the base only (``packed_linears(base_half=True)``). Needs ``rides_along``.

    The draws are ``lm``'s own; their log-probs, and the base's, equal ``lm.score`` and the base's
    ``score`` up to float32 rounding (the products run on 2n rows instead of n).
    """
    if num_samples < 1 or max_new_tokens < 1:
        raise ConfigError(f"num_samples and max_new_tokens must be >= 1, got {num_samples}, {max_new_tokens}")
    plist = lm._as_prompt_list(prompts)
    n = len(plist) * num_samples
    if not rides_along(lm, n):
        raise ConfigError("sample_with_base needs an untruncated CPU model with plain float32 LoRA layers, MKL's "
                          f"packed operators and 2 x {n} rows <= {MAX_ROWS}; use sample and score the base instead")
    with packed_linears(lm.model, 2 * n, base_half=True):
        ids, mask, total, base_tok = _draw(lm, plist, num_samples, max_new_tokens, generator, base=True)
    return _completions(plist, num_samples, ids, mask, total, None), base_tok.cpu()


def _completions(plist, num_samples, ids, mask, total, support_tok) -> Completions:
    prompt_index = torch.arange(len(plist)).repeat_interleave(num_samples)
    return Completions(ids.cpu(), mask.cpu(), total.cpu(), prompt_index,
                       support_log_probs=None if support_tok is None else support_tok.cpu())


def _draw(lm, plist, num_samples, max_new_tokens, generator, base: bool = False):
    """The sampling loop: ids, mask [n, T], total log-probs [n] and the support's per-token log-probs
    (``base``: the base's, from the second half of 2n rows that all take the first half's tokens)."""
    state, logp, support_lp = lm._start(plist + plist if base else plist, num_samples)
    n = len(plist) * num_samples
    if base:
        logp, support_lp = logp[:n], logp[n:]
    support_tok = None if support_lp is None else torch.zeros((n, max_new_tokens), dtype=support_lp.dtype,
                                                             device=lm.device)
    ids = torch.full((n, max_new_tokens), lm.pad_id, dtype=torch.long, device=lm.device)
    mask = torch.zeros((n, max_new_tokens), dtype=torch.bool, device=lm.device)
    total = torch.zeros(n, dtype=logp.dtype, device=lm.device)
    alive = torch.ones(n, dtype=torch.bool, device=lm.device)
    for t in range(max_new_tokens):
        tok = sample_categorical(logp, generator=generator)
        ids[:, t] = torch.where(alive, tok, ids[:, t])
        mask[:, t] = alive
        total = total + torch.where(alive, logp.gather(-1, tok[:, None]).squeeze(-1), 0.0)
        if support_tok is not None:
            support_tok[:, t] = torch.where(alive, support_lp.gather(-1, tok[:, None]).squeeze(-1), 0.0)
        if lm.eos_token_id is not None:
            alive = alive & (tok != lm.eos_token_id)
        if t + 1 < max_new_tokens and alive.any():
            state, logp, support_lp = lm._step(state, torch.cat([tok, tok]) if base else tok)
            if base:
                logp, support_lp = logp[:n], logp[n:]
        else:
            break
    return ids, mask, total, support_tok


_LOG2E = 1.4426950408889634  # log2(e)


def exp_log_probs(log_probs: torch.Tensor) -> torch.Tensor:
    """exp of log-probs, float64, quick where many are -inf (a masked or top-k-truncated row).

    On CPU ``torch.exp`` runs MKL's vector math, which takes a slow path on -inf entries: 8 rows of
    SmolLM2's 49,152 log-probs in 4.9-5.5 ms with -inf among them (40% or all but 16) against 0.5 ms
    without, one thread. ``exp2(x log2 e)`` runs torch's own vector kernel: 1.0-1.2 ms in every case,
    exactly 0 at -inf, within 3e-15 of ``exp`` (relative). Elsewhere (CUDA) it is ``torch.exp``."""
    x = log_probs.double()
    return torch.exp2(x * _LOG2E) if x.device.type == "cpu" else torch.exp(x)


def sample_categorical(log_probs: torch.Tensor, *, generator: torch.Generator | None = None,
                       uniforms: torch.Tensor | None = None) -> torch.Tensor:
    """One draw per row from log-probs [n, V] by inverse CDF with uniforms from ``generator``, or
    with the given ``uniforms`` [n] in [0, 1) (e.g. ``stratified_uniforms``)."""
    probs = exp_log_probs(log_probs)
    cdf = probs.cumsum(-1)
    if uniforms is None:
        u = torch.rand(probs.shape[0], 1, generator=generator, dtype=torch.float64)
    else:
        u = uniforms.double().reshape(-1, 1)
    idx = torch.searchsorted(cdf, u.to(probs.device) * cdf[:, -1:]).squeeze(-1)
    # guard against landing on a zero-probability token at the top edge
    idx = idx.clamp(max=probs.shape[-1] - 1)
    bad = probs.gather(-1, idx[:, None]).squeeze(-1) <= 0
    if bad.any():
        idx[bad] = probs[bad].argmax(-1)
    return idx


def stratified_uniforms(keys: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniforms [n] in [0, 1), stratified within each group of rows whose ``keys`` rows ([n, k] ints) are equal.

    A group of m rows gets one uniform in each stratum [j / m, (j + 1) / m), j = 0..m-1, the strata
    dealt to its rows in random order. Each row's uniform is marginally U[0, 1), so a draw by inverse
    CDF keeps each row's distribution (and any sum over rows its expectation), while the m draws of
    rows that share a distribution cover its CDF evenly: fewer repeats of the same token, less
    variance in anything averaged over them. Rows alone in their group get a plain uniform.
    """
    n = keys.shape[0]
    _, group, counts = torch.unique(keys.reshape(n, -1), dim=0, return_inverse=True, return_counts=True)
    perm = torch.randperm(n, generator=generator)
    order = perm[torch.argsort(group[perm], stable=True)]  # rows grouped, in random order within a group
    g = group[order]
    start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - start[g]
    u = torch.empty(n, dtype=torch.float64)
    u[order] = (rank + torch.rand(n, generator=generator, dtype=torch.float64)) / counts[g]
    return u
