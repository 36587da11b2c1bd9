"""Transposed weight copies for small no-grad CPU forwards: same outputs, never stale."""

from __future__ import annotations

import pytest
import torch

from bayes_rlhf.models import linears
from bayes_rlhf.models.toy import tiny_lm
from tests.models.conftest import tiny_lora


def _lin_modules(model):
    return [m for m in model.modules() if type(m) is torch.nn.Linear]


def _logits(model, ids, rows=None):
    with torch.no_grad(), linears.transposed_linears(model, ids.numel() if rows is None else rows):
        return model(input_ids=ids).logits


def test_frozen_weights_are_copied_and_outputs_match():
    lm = tiny_lm("llama", vocab_size=8, seed=0)
    ids = torch.tensor([[1, 3, 4], [1, 5, 6]])
    with torch.no_grad():
        plain = lm.model(input_ids=ids).logits
    lm.model.requires_grad_(False)
    fast = _logits(lm.model, ids)
    mods = _lin_modules(lm.model)
    assert mods and all(m in linears._COPIES for m in mods) and all("forward" not in m.__dict__ for m in mods)
    torch.testing.assert_close(fast, plain, atol=1e-12, rtol=1e-12)  # float64: reassociation only


def test_trainable_weights_are_never_copied_and_changed_frozen_ones_are_copied_again():
    lm = tiny_lm("llama", vocab_size=8, seed=1)
    ids = torch.tensor([[1, 3, 4]])
    mods = _lin_modules(lm.model)
    for _ in range(2):
        _logits(lm.model, ids)
    assert not any(m in linears._COPIES for m in mods)  # trainable: the same kernel on every call
    lm.model.requires_grad_(False)
    _logits(lm.model, ids)
    before = {m: linears._COPIES[m][1] for m in mods}
    with torch.no_grad():
        for p in lm.model.parameters():
            p.mul_(1.5)                                  # an in-place change of the frozen weights
        plain = lm.model(input_ids=ids).logits
    torch.testing.assert_close(_logits(lm.model, ids), plain, atol=1e-12, rtol=1e-12)  # no stale copy used
    assert all(linears._COPIES[m][1] is not before[m] for m in mods)


def test_large_batches_and_grad_mode_are_left_alone():
    lm = tiny_lm("gpt2", vocab_size=8, seed=2)
    lm.model.requires_grad_(False)
    ids = torch.ones((2, 40), dtype=torch.long)
    _logits(lm.model, ids)  # 80 rows > MAX_ROWS
    assert not any(m in linears._COPIES for m in _lin_modules(lm.model))
    with linears.transposed_linears(lm.model, 1):  # grad enabled: nothing patched
        assert all("forward" not in m.__dict__ for m in _lin_modules(lm.model))


def test_lora_layers_run_merged_and_match_peft_and_follow_adapter_updates():
    pytest.importorskip("peft")
    model = tiny_lora(seed=7)
    ids = torch.tensor([[1, 3, 4], [1, 5, 6]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
    fast = _logits(model, ids)
    loras = [m for m in model.modules() if hasattr(m, "lora_A")]
    assert loras and all(m in linears._COPIES for m in loras) and all("forward" not in m.__dict__ for m in loras)
    torch.testing.assert_close(fast, plain, atol=1e-12, rtol=1e-12)  # float64: reassociation only
    buffers = {m: linears._COPIES[m][1] for m in loras}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name:
                p.mul_(-2.0)                              # what an optimizer step does to the adapters
        plain = model(input_ids=ids).logits
    torch.testing.assert_close(_logits(model, ids), plain, atol=1e-12, rtol=1e-12)  # merged again, not stale
    assert all(linears._COPIES[m][1] is buffers[m] for m in loras)  # into the same buffer
    with torch.no_grad():
        with model.disable_adapter():                     # adapters off: peft's own forward, the base alone
            base = model(input_ids=ids).logits
            torch.testing.assert_close(_logits(model, ids), base, atol=1e-12, rtol=1e-12)
