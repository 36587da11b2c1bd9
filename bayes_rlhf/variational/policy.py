"""The trainable policy: a copy of the prior (or the prior with LoRA adapters), its value head, and
the merge back into plain transformers weights at the end of a run."""

from __future__ import annotations

import copy
import warnings

import torch

from bayes_rlhf.errors import ConfigError
from bayes_rlhf.models.causal_lm import CausalLM


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
        # adapter init draws from the global generator; peft reads transformers' deprecated
        # ``is_gradient_checkpointing`` (a FutureWarning the user can do nothing about)
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                    category=FutureWarning)
            torch.manual_seed(config.seed)
            try:
                model = get_peft_model(model, LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha,
                                                         target_modules="all-linear", lora_dropout=0.0))
            except ValueError as exc:  # peft's NoMatchingPeftModuleError: no linear layer it can adapt
                raise ConfigError(f"LoRA (TrainerConfig.lora_rank={config.lora_rank}) found no layer of this model "
                                  f"to adapt ({exc}); set lora_rank = 0 for full fine-tuning") from exc
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
