"""make_policy: the trainable copy of the prior."""

import warnings

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.models.toy import tiny_lm
from bayes_rlhf.variational.policy import make_policy

pytest.importorskip("peft")


def test_lora_policy_emits_no_third_party_future_warning():
    # peft reads transformers' deprecated is_gradient_checkpointing on wrapping: a user training with
    # lora_rank > 0 saw that FutureWarning printed, about a call they never made
    prior = tiny_lm("llama", vocab_size=12, dtype=torch.float32)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        policy = make_policy(prior, br.TrainerConfig(steps=1, lora_rank=2))
    assert not [w for w in seen if issubclass(w.category, FutureWarning)], [str(w.message) for w in seen]
    assert hasattr(policy.model, "merge_and_unload")  # it is a LoRA model
    assert all(not p.requires_grad for n, p in policy.model.named_parameters() if "lora_" not in n)
