"""MKL-packed weights for sampling's n-row forwards: the same products (float32 rounding), never stale,
left alone under grad, for other row counts and outside the block."""

from __future__ import annotations

import weakref

import pytest
import torch

from bayes_rlhf import errors as br_errors
from bayes_rlhf.models import packed
from bayes_rlhf.models.toy import tiny_lm
from tests.models.conftest import tiny_lora

pytestmark = pytest.mark.skipif(not packed.available(), reason="torch without MKL's packed linear operators")

# float32 products summed in another order: differences of a few ulps of values O(1) (eps 1.2e-7)
TOL = dict(atol=1e-5, rtol=1e-5)


def _lin_modules(model):
    return [m for m in model.modules() if type(m) is torch.nn.Linear]


def _step_logits(model, ids, rows):
    with torch.no_grad(), packed.packed_linears(model, rows):
        return model(input_ids=ids).logits


def test_packed_rows_match_the_plain_forward_and_other_row_counts_fall_through():
    lm = tiny_lm("llama", vocab_size=8, seed=0, dtype=torch.float32)
    ids = torch.tensor([[1, 3, 4], [1, 5, 6]])
    with torch.no_grad():
        plain = lm.model(input_ids=ids).logits
    mods = _lin_modules(lm.model)
    fast = _step_logits(lm.model, ids, ids.numel())  # 6 token rows: every layer from its packed weight
    assert mods and all(m in packed._PACKED for m in mods) and all("forward" not in m.__dict__ for m in mods)
    torch.testing.assert_close(fast, plain, **TOL)
    with packed.packed_linears(lm.model, 4), torch.no_grad():  # another row count: the modules' own forward
        assert all("forward" in m.__dict__ for m in mods)
        other = lm.model(input_ids=ids).logits
    torch.testing.assert_close(other, plain, atol=0.0, rtol=0.0)  # bit for bit: the plain kernel ran


def test_sampling_draws_the_same_completions_as_without_packing(monkeypatch):
    lm = tiny_lm("llama", vocab_size=16, seed=3, dtype=torch.float32)
    a = lm.sample(["w1 w2", "w3"], 4, 5, generator=torch.Generator().manual_seed(11))
    assert all(m in packed._PACKED for m in _lin_modules(lm.model))  # the 8-row steps ran packed
    monkeypatch.setitem(packed._STATE, "ok", False)  # as if torch had no MKL packed operators
    b = lm.sample(["w1 w2", "w3"], 4, 5, generator=torch.Generator().manual_seed(11))
    assert torch.equal(a.ids, b.ids) and torch.equal(a.mask, b.mask)
    torch.testing.assert_close(a.log_probs, b.log_probs, **TOL)
    # the draws' log-probs are the model's own: scoring (no packing there) agrees
    torch.testing.assert_close(lm.score(["w1 w2"] * 4 + ["w3"] * 4, a.ids, a.mask).sum(-1), a.log_probs, **TOL)
    assert all("forward" not in m.__dict__ for m in lm.model.modules())


def test_changed_weights_are_packed_again_and_grad_mode_falls_through():
    lm = tiny_lm("llama", vocab_size=8, seed=1, dtype=torch.float32)
    ids = torch.tensor([[1, 3, 4, 5]])
    mods = _lin_modules(lm.model)
    _step_logits(lm.model, ids, 4)
    before = {m: packed.held_copy(m) for m in mods}
    _step_logits(lm.model, ids, 4)
    assert all(packed.held_copy(m) is before[m] for m in mods)  # unchanged weights: kept
    with torch.no_grad():
        for p in lm.model.parameters():
            p.mul_(1.5)                                  # what an optimiser step does to trainable weights
        plain = lm.model(input_ids=ids).logits
    torch.testing.assert_close(_step_logits(lm.model, ids, 4), plain, **TOL)  # no stale packed copy
    assert all(packed.held_copy(m) is not before[m] for m in mods)
    with packed.packed_linears(lm.model, 4):  # grad enabled: the module's own forward, gradients intact
        out = lm.model(input_ids=ids).logits
        grads = torch.autograd.grad(out.sum(), [mods[0].weight])
    ref = torch.autograd.grad(lm.model(input_ids=ids).logits.sum(), [mods[0].weight])
    torch.testing.assert_close(grads[0], ref[0], atol=0.0, rtol=0.0)


def test_float64_and_too_many_rows_are_left_alone():
    lm = tiny_lm("gpt2", vocab_size=8, seed=2)  # float64: MKL's packed GEMM is float32 only
    with packed.packed_linears(lm.model, 3):
        assert all("forward" not in m.__dict__ for m in _lin_modules(lm.model))
    lm32 = tiny_lm("llama", vocab_size=8, seed=2, dtype=torch.float32)
    with packed.packed_linears(lm32.model, packed.MAX_ROWS + 1):
        assert all("forward" not in m.__dict__ for m in _lin_modules(lm32.model))
    for rows in range(1, packed.MIN_ROWS):  # so few rows run faster on the plain kernels
        with packed.packed_linears(lm32.model, rows):
            assert all("forward" not in m.__dict__ for m in _lin_modules(lm32.model))
    with packed.packed_linears(lm32.model, packed.MIN_ROWS):
        assert all("forward" in m.__dict__ for m in _lin_modules(lm32.model))


def _lora(seed):
    return tiny_lora(seed, dtype=torch.float32)


def test_lora_layers_add_the_low_rank_term_to_the_packed_base_and_follow_adapter_updates():
    pytest.importorskip("peft")
    model = _lora(seed=7)
    ids = torch.tensor([[1, 3, 4], [1, 5, 6]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
    loras = [m for m in model.modules() if hasattr(m, "lora_A")]
    torch.testing.assert_close(_step_logits(model, ids, 6), plain, **TOL)
    assert loras and all(m.base_layer in packed._PACKED for m in loras)
    kept = {m: packed.held_copy(m.base_layer) for m in loras}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name:
                p.mul_(-2.0)                              # an optimiser step on the adapters only
        plain = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
    torch.testing.assert_close(_step_logits(model, ids, 6), plain, **TOL)  # adapters read as they are now
    assert all(packed.held_copy(m.base_layer) is kept[m] for m in loras)  # the frozen base: packed once
    with torch.no_grad(), model.disable_adapter():        # adapters off: peft's own forward, the base alone
        torch.testing.assert_close(_step_logits(model, ids, 6), base, **TOL)
    with torch.no_grad(), packed.packed_linears(model, 6):
        with model.disable_adapter():                     # switched off inside the block: followed too
            torch.testing.assert_close(model(input_ids=ids).logits, base, **TOL)
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_base_half_runs_the_second_half_of_the_batch_through_the_base_alone():
    pytest.importorskip("peft")
    model = _lora(seed=5)
    ids = torch.tensor([[1, 3, 4], [1, 5, 6]])
    with torch.no_grad():
        lora = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
    both = torch.cat([ids, ids])
    for rows in (both.numel(), 4):  # packed products (12 rows) and the plain kernel (any other count)
        with torch.no_grad(), packed.packed_linears(model, rows, base_half=True):
            out = model(input_ids=both).logits
        torch.testing.assert_close(out[:2], lora, **TOL)
        torch.testing.assert_close(out[2:], base, **TOL)
    with packed.packed_linears(model, 4, base_half=True), pytest.raises(br_errors.ConfigError, match="no-grad"):
        model(input_ids=both)                             # under grad it refuses rather than mix the halves
    with pytest.raises(br_errors.ConfigError, match="even row count"):
        with packed.packed_linears(model, 5, base_half=True):
            pass
    plain = tiny_lm("llama", vocab_size=8, seed=5, dtype=torch.float32)
    assert not packed.plain_lora(plain.model)         # no LoRA layers: nothing to ride along
    with pytest.raises(br_errors.ConfigError, match="LoRA"):
        with packed.packed_linears(plain.model, 4, base_half=True):
            pass


def test_a_strided_input_gives_the_same_product():
    layer = torch.nn.Linear(6, 5)
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0)).t()  # [4, 6], not contiguous
    with torch.no_grad():
        plain = layer(x)
        with packed.packed_linears(layer, 4):
            assert "forward" in layer.__dict__
            torch.testing.assert_close(layer(x), plain, **TOL)


def test_set_enabled_turns_the_packed_kernels_off_and_on():
    lm = tiny_lm("llama", vocab_size=8, seed=4, dtype=torch.float32)
    try:
        packed.set_enabled(False)
        assert not packed.available()
        with packed.packed_linears(lm.model, 8):
            assert all("forward" not in m.__dict__ for m in _lin_modules(lm.model))
        packed.set_enabled(True)
        assert packed.available() == packed._self_check()
        with pytest.raises(br_errors.ConfigError, match="True or False"):
            packed.set_enabled("no")
    finally:
        packed.set_enabled(True)


def test_a_fused_optimiser_step_is_seen_by_the_next_block():
    # Adam(fused=True), the trainer's optimiser on CPU, updates parameters in place without bumping
    # their version counters: a packed copy kept by its stamp was stale after the step, so full
    # fine-tuning sampled from the first policy (the adaptive-KL test's beta came out 7-12% low)
    from bayes_rlhf.models.linears import transposed_linears

    ids = torch.tensor([[1, 3, 4, 5]])
    full = tiny_lm("llama", vocab_size=8, seed=0, dtype=torch.float32).model
    blocks = ((full, lambda m: packed.packed_linears(m, 4)), (_lora(0), lambda m: packed.packed_linears(m, 4)),
              (_lora(1), lambda m: transposed_linears(m, 4)))
    for model, block in blocks:
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1, fused=True)
        for _ in range(3):
            with torch.no_grad():
                plain = model(input_ids=ids).logits
            with torch.no_grad(), block(model):
                fast = model(input_ids=ids).logits
            torch.testing.assert_close(fast, plain, **TOL)
            model(input_ids=ids).logits.pow(2).mean().backward()
            opt.step()
            opt.zero_grad()


def _prompt_start(lm, prompt="w1 w2 w3 w4"):
    ids, _ = lm._prompt_batch([prompt])
    return ids.numel(), lm.start([prompt], 2)[1]


def test_a_prompt_run_again_is_computed_from_packed_copies_kept_beside_the_steps():
    lm = tiny_lm("llama", vocab_size=16, seed=5, dtype=torch.float32)
    mods = _lin_modules(lm.model)
    lm.sample("w1", 8, 3, generator=torch.Generator().manual_seed(0))  # the 8-row steps: packed
    rows, first = _prompt_start(lm)
    assert rows != 8 and all(packed.held_copy(m, rows) is None for m in mods)  # once: plain
    steps = {m: packed.held_copy(m, 8) for m in mods}
    _, again = _prompt_start(lm)
    assert all(packed.held_copy(m, rows) is not None for m in mods)  # again: packed for its rows
    assert all(packed.held_copy(m, 8) is steps[m] for m in mods)  # the steps' copies kept beside
    torch.testing.assert_close(again, first, **TOL)
    # an optimiser step: the weights may have changed, so the prompt counts as new (plain once more)
    opt = torch.optim.SGD(lm.model.parameters(), lr=0.0)
    opt.step()
    seen = packed._PROMPT_ROWS[lm.model]
    _prompt_start(lm)
    assert packed._PROMPT_ROWS[lm.model] is not seen and packed._PROMPT_ROWS[lm.model][2] == {rows}


def test_past_the_budget_the_least_recently_used_copies_go_never_the_current_blocks(monkeypatch):
    lm = tiny_lm("llama", vocab_size=16, seed=6, dtype=torch.float32)
    mods = _lin_modules(lm.model)
    one_set = sum(m.weight.numel() * m.weight.element_size() for m in mods)
    monkeypatch.setattr(packed, "_PACKED", weakref.WeakKeyDictionary())  # other tests' copies aside
    monkeypatch.setattr(packed, "MAX_PACKED_BYTES", int(1.5 * one_set))  # room for one set and a half
    ids = torch.tensor([[1, 3, 4, 5]])
    _step_logits(lm.model, ids, 4)
    assert all(packed.held_copy(m, 4) is not None for m in mods)
    plain = lm.model(input_ids=torch.tensor([[1, 3, 4, 5, 6, 7]])).logits
    out = _step_logits(lm.model, torch.tensor([[1, 3, 4, 5, 6, 7]]), 6)
    torch.testing.assert_close(out, plain, **TOL)
    assert all(packed.held_copy(m, 6) is not None for m in mods)  # the new row count: every layer packed
    dropped = [m for m in mods if packed.held_copy(m, 4) is None]
    assert 0 < len(dropped) < len(mods)  # the older copies made room, as much as needed
    assert sum(h[2] for m in mods for h in packed._PACKED[m].values()) <= packed.MAX_PACKED_BYTES
    monkeypatch.setattr(packed, "MAX_PACKED_BYTES", int(0.5 * one_set))  # not even one set fits
    out = _step_logits(lm.model, torch.tensor([[1, 3, 4, 5, 6]]), 5)
    torch.testing.assert_close(out, lm.model(input_ids=torch.tensor([[1, 3, 4, 5, 6]])).logits, **TOL)
    made = [m for m in mods if packed.held_copy(m, 5) is not None]
    assert 0 < len(made) < len(mods)  # the block packed what fit and left the rest to the plain kernels
    assert sum(h[2] for m in mods for h in packed._PACKED[m].values()) <= packed.MAX_PACKED_BYTES


def test_a_model_too_large_for_two_sets_of_copies_keeps_its_prompt_pass_plain(monkeypatch):
    lm = tiny_lm("llama", vocab_size=16, seed=8, dtype=torch.float32)
    mods = _lin_modules(lm.model)
    weights = sum(m.weight.numel() * m.weight.element_size() for m in mods)
    monkeypatch.setattr(packed, "MAX_PACKED_BYTES", int(1.5 * weights))  # the steps' copies fit, not two sets
    rows, _ = _prompt_start(lm)
    _prompt_start(lm)
    assert all(packed.held_copy(m, rows) is None for m in mods)
