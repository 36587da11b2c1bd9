"""Helpers shared by tests/models: a tiny llama with peft LoRA adapters that matter (the fast-kernel tests)."""

import torch

from bayes_rlhf.models.toy import tiny_lm


def tiny_lora(seed: int, dtype=torch.float64):
    """A tiny llama wrapped by peft (r = 2 on every linear layer) with its B matrices drawn, not 0."""
    from peft import LoraConfig, get_peft_model

    lm = tiny_lm("llama", vocab_size=8, seed=seed, dtype=dtype)
    torch.manual_seed(seed)  # test: peft draws its adapter init from the global generator
    model = get_peft_model(lm.model, LoraConfig(r=2, lora_alpha=4, target_modules="all-linear", lora_dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)  # peft starts B at 0: make the adapters matter
    return model
