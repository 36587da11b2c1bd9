"""What a training step needs besides the loss: policy construction, differentiable scoring with a
value head, the sample sources of each objective, and the exact evaluator.

    policy  = copy of the prior (full fine-tune) or the prior with LoRA adapters (peft)
    forward = one pass over prompt + completion -> per-token log q [n, T] (+ values V(s_t) [n, T])
    source  = policy samples | prior samples | samples of pi* (exact table, exact rejection, given)
"""

from __future__ import annotations

import contextlib
import copy
from typing import Callable, Sequence

import torch

from bayes_rlhf.diagnostics.exact import compare
from bayes_rlhf.errors import ConfigError, PromptError, TokenizerMismatchError
from bayes_rlhf.exact.posterior import ExactPosterior
from bayes_rlhf.exact.rejection import exact_rejection_sample
from bayes_rlhf.exact.solve import exact_posterior
from bayes_rlhf.models.causal_lm import CausalLM
from bayes_rlhf.models.completions import Completions


def make_policy(prior: CausalLM, config) -> CausalLM:
    """A trainable copy of the prior (its own weights; the prior is never changed).

    Against a top-k-truncated prior the policy is restricted to the prior's support S(prefix):
    its own logits on S, renormalised (``CausalLM(support=prior)``), so that every completion it
    draws has prior (and posterior) mass.
    """
    model = copy.deepcopy(prior.model)
    if config.lora_rank > 0:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as exc:
            raise ConfigError("TrainerConfig.lora_rank > 0 needs the optional package peft "
                              "(pip install peft); or set lora_rank = 0 for full fine-tuning") from exc
        with torch.random.fork_rng(devices=[]):  # adapter init draws from the global generator
            torch.manual_seed(config.seed)
            model = get_peft_model(model, LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha,
                                                     target_modules="all-linear", lora_dropout=0.0))
    support = prior if prior.top_k is not None else None
    policy = CausalLM(model, prior.tokenizer, device=prior.device, support=support, source=prior.source)
    policy.model.eval()  # no dropout: the sampled and the differentiated policy are the same
    return policy


def merged(policy: CausalLM) -> CausalLM:
    """The policy with LoRA adapters merged into plain transformers weights (no-op otherwise)."""
    if hasattr(policy.model, "merge_and_unload"):
        return CausalLM(policy.model.merge_and_unload(), policy.tokenizer, device=policy.device,
                        top_k=policy.top_k, support=policy.support, source=policy.source)
    return policy


def value_head_for(policy: CausalLM) -> torch.nn.Linear:
    """A linear value head on the last hidden state, initialised to 0."""
    hidden = policy.model.get_output_embeddings().weight.shape[1]
    head = torch.nn.Linear(hidden, 1, dtype=policy.dtype, device=policy.device)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    return head


def autocast_for(lm: CausalLM, bf16: bool):
    if bf16 and lm.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def forward(lm: CausalLM, prompts: Sequence[str], ids: torch.Tensor, mask: torch.Tensor,
            value_head: torch.nn.Module | None = None, bf16: bool = False,
            model: torch.nn.Module | None = None):
    """Per-token log q [n, T] (0 at padding, differentiable) and values [n, T] (or None).

    ``prompts`` has one prompt per row. Values are V(s_t): the head on the hidden state that
    predicts token t. ``model`` replaces ``lm.model`` in the pass (accelerate's wrapped module).
    """
    with autocast_for(lm, bf16):
        tok, h = lm.sequence_forward(list(prompts), ids, mask, model=model, hidden_states=value_head is not None)
    values = None
    if value_head is not None:
        values = value_head(h.detach().to(next(value_head.parameters()).dtype)).squeeze(-1)
        values = values.masked_fill(~mask.to(values.device), 0.0)
    return tok, values


def check_prompts(target, prompts) -> list[str]:
    """The prompts as a list, each checked against the tokenizer, before any work."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts) if prompts is not None else []
    if not prompts:
        raise PromptError("prompts is empty; give at least one prompt (a str or a list of str)")
    for p in prompts:
        target.check_prompt(p)
    if len(set(prompts)) != len(prompts):
        raise PromptError("prompts has duplicates; give each prompt once (weight by repeating a step instead)")
    return prompts


def as_posteriors(evaluator, target, prompts: list[str]) -> dict[str, ExactPosterior] | None:
    """Normalise ``evaluator`` (None, True, an ExactPosterior, a list or a dict) to prompt -> posterior."""
    if evaluator is None or evaluator is False:
        return None
    if evaluator is True:
        return {p: exact_posterior(target, p) for p in prompts}
    if isinstance(evaluator, ExactPosterior):
        evaluator = [evaluator]
    posts = dict(evaluator) if isinstance(evaluator, dict) else {e.prompt: e for e in evaluator}
    for p, post in posts.items():
        if not isinstance(post, ExactPosterior):
            raise ConfigError(f"evaluator entries must be ExactPosterior, got {type(post).__name__}")
        if p not in prompts:
            raise ConfigError(f"the evaluator has a posterior for {p!r}, which is not a training prompt")
        if not target.prior.same_tokenizer(post.lm):
            raise TokenizerMismatchError("the evaluator's posterior was built on another tokenizer")
        if post.beta != target.beta or post.completion_ids.shape[1] != target.max_new_tokens:
            raise ConfigError(f"the evaluator's posterior for {p!r} has beta={post.beta}, "
                              f"T={post.completion_ids.shape[1]}; the target has beta={target.beta}, "
                              f"T={target.max_new_tokens}")
    return posts


def evaluate(policy: CausalLM, posteriors: dict[str, ExactPosterior]) -> dict:
    """Exact KL(q || pi*) and KL(pi* || q), averaged over the evaluator's prompts."""
    kq, kp = [], []
    with torch.no_grad():
        for post in posteriors.values():
            c = compare(policy, post)
            kq.append(c.kl_q_posterior)
            kp.append(c.kl_posterior_q)
    return {"kl_q_posterior": sum(kq) / len(kq), "kl_posterior_q": sum(kp) / len(kp)}


def posterior_sampler(target, config, posteriors: dict | None, sampler: Callable | None) -> Callable:
    """``draw(prompt, n, generator) -> (Completions, log_weights [n] or None)`` for distillation."""
    if config.distill_source == "given":
        if sampler is None:
            raise ConfigError("distill_source='given' needs train_policy(..., sampler=f) with "
                              "f(prompt, n, generator) -> Completions or (Completions, log_weights)")

        def draw(prompt, n, gen):
            out = sampler(prompt, n, gen)
            if isinstance(out, tuple):
                return out[0], torch.as_tensor(out[1], dtype=torch.float64)
            if hasattr(out, "log_weights") and hasattr(out, "completions"):
                return out.completions, torch.as_tensor(out.log_weights, dtype=torch.float64)
            if not isinstance(out, Completions):
                raise ConfigError(f"the distillation sampler returned {type(out).__name__}; return Completions")
            return out, None
        return draw
    if config.distill_source == "rejection":
        return lambda prompt, n, gen: (exact_rejection_sample(target, prompt, n, config.reward_max, gen).samples,
                                       None)
    cache = dict(posteriors or {})

    def draw_exact(prompt, n, gen):
        if prompt not in cache:
            cache[prompt] = exact_posterior(target, prompt)
        return cache[prompt].sample(n, gen), None
    return draw_exact
