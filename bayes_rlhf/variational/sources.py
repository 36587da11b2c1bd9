"""Where a training step's samples come from: the ``Source`` an objective declares, and its draw.

    policy     q's own samples (``CausalLM.sample``); proposal log-probs log q_old
    prior      pi0's samples; proposal log-probs log pi0
    exact      pi* from the enumerated posterior (``ExactPosterior.sample``; enumerated on first use)
    rejection  pi* by exact rejection sampling (``reward_max``: an upper bound of the reward)
    given      ``train_policy(sampler=f)``: ``f(prompt, n, generator)`` returns Completions,
               (Completions, log_weights [n]) or WeightedSamples (weighted draws of pi*)
    preferences  ``train_policy(preferences=...)``: n // 2 pairs per prompt drawn uniformly (with
               replacement) from the prompt's pairs, rows (chosen, rejected) in turn

``make_draw(source, ...)`` returns ``draw(prompts, generator) -> Drawn``: ``num_per_prompt`` rows
per prompt (the given sampler may return another number), grouped by prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from bayes_rlhf.errors import ConfigError
from bayes_rlhf.exact.rejection import exact_rejection_sample
from bayes_rlhf.exact.from_target import exact_posterior
from bayes_rlhf.models.completions import Completions
from bayes_rlhf.models.sampling import rides_along, sample_with_base
from bayes_rlhf.samplers.weighted import WeightedSamples
from bayes_rlhf.variational.preferences import check_covers

KINDS = ("policy", "prior", "exact", "rejection", "given", "preferences")


@dataclass(frozen=True)
class Source:
    """A sample source: ``kind`` in KINDS, and ``reward_max`` for "rejection"."""

    kind: str
    reward_max: float | None = None

    @property
    def on_policy(self) -> bool:
        return self.kind == "policy"


POLICY, PRIOR = Source("policy"), Source("prior")


@dataclass(frozen=True)
class Drawn:
    """Draws of one step: ids, mask [n, T]; group LongTensor [n] (0..P-1, the step's prompts in
    order); log_weights Tensor [n] of weighted draws, or None when every draw weighs the same;
    prior_logp Tensor [n, T] when the draw already has the target prior's per-token log-probs (a
    policy restricted to that truncated prior's support runs it while sampling), else None."""

    ids: torch.Tensor
    mask: torch.Tensor
    group: torch.Tensor
    log_weights: torch.Tensor | None = None
    prior_logp: torch.Tensor | None = None


def check_source(source: Source, sampler: Callable | None, preferences=None, prompts=None) -> None:
    """ConfigError, before any work, when ``source`` cannot draw with what ``train_policy`` was given."""
    if source.kind == "preferences" and preferences is None:
        raise ConfigError("this objective learns from preference pairs: pass train_policy(..., preferences=...) "
                          "with (prompt, chosen, rejected) triples, a datasets.Dataset or br.sample_preferences(...)")
    if source.kind != "preferences" and preferences is not None:
        raise ConfigError("train_policy(preferences=...) is read by objective='dpo' or 'ipo' only; choose one of "
                          "those or leave preferences out")
    if preferences is not None and prompts is not None:
        check_covers(preferences, prompts)
    if source.kind not in KINDS:
        raise ConfigError(f"unknown sample source {source.kind!r}; an objective's source is one of {list(KINDS)}")
    if source.kind != "given" and sampler is not None:
        raise ConfigError("train_policy(sampler=...) is read by objective='distill' with distill_source='given' "
                          "only; choose that or leave sampler out")
    if source.kind == "given" and sampler is None:
        raise ConfigError("distill_source='given' needs train_policy(..., sampler=f) with f(prompt, n, generator) "
                          "-> Completions, (Completions, log_weights) or WeightedSamples")
    if source.kind == "rejection" and source.reward_max is None:
        raise ConfigError("rejection sampling needs reward_max, an upper bound of the reward")


def make_draw(source: Source, target, policy, num_per_prompt: int, posteriors: dict | None = None,
              sampler: Callable | None = None, preferences=None) -> Callable[[Sequence[str], torch.Generator], Drawn]:
    """``draw(prompts, generator) -> Drawn`` for ``source`` (``policy`` is the model being trained)."""
    check_source(source, sampler, preferences)
    if source.kind == "preferences":
        return _pairs(preferences, max(1, num_per_prompt // 2))
    if source.kind in ("policy", "prior"):
        lm = policy if source.kind == "policy" else target.prior
        with_prior = lm is policy and base_is_prior(policy, target.prior)

        def draw_lm(prompts, gen):
            if with_prior and rides_along(lm, len(prompts) * num_per_prompt):  # the prior in the same forwards
                c, prior_lp = sample_with_base(lm, list(prompts), num_per_prompt, target.max_new_tokens, generator=gen)
                return Drawn(c.ids, c.mask, c.prompt_index, prior_logp=prior_lp)
            c = lm.sample(list(prompts), num_per_prompt, target.max_new_tokens, generator=gen)
            prior_lp = c.support_log_probs if lm.support is target.prior else None
            return Drawn(c.ids, c.mask, c.prompt_index, prior_logp=prior_lp)
        return draw_lm
    one = {"exact": _exact, "rejection": _rejection, "given": _given}[source.kind](source, target, posteriors,
                                                                                  sampler)
    return lambda prompts, gen: _per_prompt(one, prompts, num_per_prompt, gen)


def base_is_prior(policy, prior) -> bool:
    """True when ``policy`` is a LoRA model whose frozen base is ``prior`` (equal tensors, untruncated
    both): sampling can then run the prior's rows in its forwards (``sample_with_base``)."""
    model = policy.model
    if (not hasattr(model, "disable_adapter") or prior.top_k is not None or policy.top_k is not None
            or policy.support is not None or policy.device != prior.device):
        return False
    base = {k.replace(".base_layer.", "."): v for k, v in model.get_base_model().state_dict().items()
            if ".lora_" not in k}
    own = prior.model.state_dict()
    if base.keys() != own.keys():
        return False
    frozen = all(not p.requires_grad for k, p in model.named_parameters() if ".lora_" not in k)
    return frozen and all(base[k].dtype == v.dtype and torch.equal(base[k], v) for k, v in own.items())


def _per_prompt(one, prompts: Sequence[str], n: int, gen) -> Drawn:
    parts = [one(p, n, gen) for p in prompts]
    group = torch.arange(len(parts)).repeat_interleave(torch.tensor([len(c) for c, _ in parts]))
    log_w = None
    if any(w is not None for _, w in parts):
        log_w = torch.cat([w if w is not None else torch.zeros(len(c), dtype=torch.float64) for c, w in parts])
    return Drawn(torch.cat([c.ids for c, _ in parts]), torch.cat([c.mask for c, _ in parts]), group, log_w)


def _exact(source, target, posteriors, sampler):
    cache = dict(posteriors or {})

    def one(prompt, n, gen):
        if prompt not in cache:
            cache[prompt] = exact_posterior(target, prompt)
        return cache[prompt].sample(n, generator=gen), None
    return one


def _rejection(source, target, posteriors, sampler):
    return lambda prompt, n, gen: (exact_rejection_sample(target, prompt, n, source.reward_max,
                                                          generator=gen).samples, None)


def _given(source, target, posteriors, sampler):
    def one(prompt, n, gen):
        out = sampler(prompt, n, gen)
        if isinstance(out, WeightedSamples):
            if out.num_prompts != 1:
                raise ConfigError(f"the distillation sampler returned WeightedSamples of {out.num_prompts} prompts "
                                  f"for the one prompt {prompt!r}; return the samples of that prompt only")
            return out.completions(), out.log_weights.double()
        completions, log_w = out if isinstance(out, tuple) and len(out) == 2 else (out, None)
        if not isinstance(completions, Completions):
            raise ConfigError(f"the distillation sampler returned {type(out).__name__}; return Completions, "
                              "(Completions, log_weights) or WeightedSamples")
        return completions, None if log_w is None else torch.as_tensor(log_w, dtype=torch.float64)
    return one


def _pairs(preferences, m: int):
    rows = {p: preferences.rows_of(p) for p in set(preferences.prompts)}

    def draw(prompts, gen):
        idx = torch.cat([rows[p][torch.randint(len(rows[p]), (m,), generator=gen)] for p in prompts])
        ids = torch.stack([preferences.chosen_ids[idx], preferences.rejected_ids[idx]], 1).flatten(0, 1)
        mask = torch.stack([preferences.chosen_mask[idx], preferences.rejected_mask[idx]], 1).flatten(0, 1)
        return Drawn(ids, mask, torch.arange(len(prompts)).repeat_interleave(2 * m))
    return draw
