"""The LM head in row tiles (``lm_head.chosen_log_probs``) against the plain log_softmax gather."""

from __future__ import annotations

import pytest
import torch

from bayes_rlhf.models import lm_head
from bayes_rlhf.models.passes import completion_logits
from bayes_rlhf.models.toy import tiny_lm


def _plain(hidden, weight, ids):
    return torch.log_softmax(hidden @ weight.t(), -1).gather(-1, ids[..., None]).squeeze(-1)


@pytest.mark.parametrize("tile", [1 << 24, 7 * 11])  # one tile; tiles of 7 rows (3 rows left in the last)
def test_chosen_log_probs_equal_log_softmax_gather_with_gradients(tile):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 8, 5, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 5, generator=g, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 11, (3, 8), generator=g)
    upstream = torch.randn(3, 8, generator=g, dtype=torch.float64)
    results = []
    for f in (_plain, lambda h, w, y: lm_head.chosen_log_probs(h, w, y, tile_elements=tile)):
        out = f(hidden, weight, ids)
        d_h, d_w = torch.autograd.grad((out * upstream).sum(), (hidden, weight))
        results.append((out.detach(), d_h, d_w))
    for a, b in zip(*results):  # float64: the same sums in another order (about 1e-15)
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(lm_head.chosen_log_probs(hidden, weight, ids, tile_elements=tile),
                                   results[0][0], atol=1e-12, rtol=1e-12)


def test_a_second_backward_through_a_retained_graph_gives_the_same_gradient():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 3, generator=g, dtype=torch.float64)
    out = lm_head.chosen_log_probs(hidden, weight, torch.tensor([0, 5, 2, 2])).sum()
    first = torch.autograd.grad(out, hidden, retain_graph=True)[0]
    torch.testing.assert_close(torch.autograd.grad(out, hidden)[0], first, atol=0, rtol=0)


def test_float32_hidden_states_give_float32_and_float64_give_float64():
    for dtype in (torch.float32, torch.float64):
        h, w = torch.randn(2, 3, dtype=dtype), torch.randn(4, 3, dtype=dtype)
        assert lm_head.chosen_log_probs(h, w, torch.tensor([1, 3])).dtype == dtype


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_tiled_scoring_equals_the_plain_path_with_gradients_and_hidden_states(arch):
    lm = tiny_lm(arch, vocab_size=8, seed=4)
    assert lm_head.head_of(lm.model) is lm.model.get_output_embeddings().weight
    rows = ["w2 w3 w1", "w1", "w2 w3 w1", "w4 w4"]  # left padding in the prompt pass
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, lm.vocab_size, (4, 5), generator=g)
    mask = torch.arange(5)[None, :] < torch.tensor([[5], [2], [4], [1]])
    distinct = list(dict.fromkeys(rows))
    p_ids, p_att = lm._prompt_batch(distinct)
    index = torch.tensor([distinct.index(p) for p in rows])
    lm.model.zero_grad(set_to_none=True)
    logits, hidden = completion_logits(lm.model, p_ids, p_att, index, ids, mask, hidden_states=True)
    plain = torch.log_softmax(logits, -1).gather(-1, ids[..., None]).squeeze(-1).masked_fill(~mask, 0.0)
    plain.sum().backward()
    plain_grads = [p.grad.clone() for p in lm.model.parameters()]
    lm.model.zero_grad(set_to_none=True)
    tiled, tiled_hidden = lm.sequence_forward(rows, ids, mask, hidden_states=True)
    tiled.sum().backward()
    torch.testing.assert_close(tiled, plain, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(tiled_hidden[mask], hidden[mask], atol=1e-10, rtol=1e-10)
    # Llama's RMSNorm rounds through float32 (see test_passes): one prompt row repeated sums differently
    tol = 1e-9 if arch == "gpt2" else 1e-5
    for a, p in zip(plain_grads, lm.model.parameters()):
        torch.testing.assert_close(p.grad, a, atol=tol, rtol=tol)
    with torch.no_grad():  # the no-grad path runs the prompt once through a KV cache
        torch.testing.assert_close(lm.score(rows, ids, mask), plain.detach(), atol=1e-10, rtol=1e-10)


def test_a_head_that_is_not_a_plain_projection_keeps_the_plain_path():
    lm = tiny_lm("gpt2", vocab_size=8, seed=6)
    scaled = tiny_lm("gpt2", vocab_size=8, seed=6)
    inner_forward = scaled.model.forward

    def forward(*args, **kwargs):  # a model that scales its logits (as Cohere's logit_scale does)
        out = inner_forward(*args, **kwargs)
        out.logits = out.logits * 0.5
        return out

    scaled.model.forward = forward
    assert lm_head.head_of(scaled.model) is None
    ids, mask = torch.tensor([[1, 2, 3]]), torch.ones((1, 3), dtype=torch.bool)
    with torch.no_grad():
        logits, _ = completion_logits(scaled.model, *scaled._prompt_batch(["w1"]), torch.tensor([0]), ids, mask)
    expected = torch.log_softmax(logits, -1).gather(-1, ids[..., None]).squeeze(-1)
    torch.testing.assert_close(scaled.score("w1", ids, mask), expected, atol=1e-12, rtol=1e-12)
    lm.model.lm_head.bias = torch.nn.Parameter(torch.zeros(lm.vocab_size, dtype=torch.float64))
    assert lm_head.head_of(lm.model) is None


def test_a_peft_lora_model_scores_through_its_adapters_in_tiles():
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model

    from bayes_rlhf.models.causal_lm import CausalLM

    base = tiny_lm("llama", vocab_size=8, seed=7)
    torch.manual_seed(7)  # test: peft draws its adapter init from the global generator
    model = get_peft_model(base.model, LoraConfig(r=2, lora_alpha=4, target_modules="all-linear", lora_dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)  # peft starts B at 0: make the adapters matter
    lm = CausalLM(model, base.tokenizer, device="cpu")
    assert lm_head.head_of(model) is not None
    ids, mask = torch.tensor([[1, 2, 3], [4, 4, 0]]), torch.tensor([[True, True, True], [True, True, False]])
    p_ids, p_att = lm._prompt_batch(["w1"])
    logits, _ = completion_logits(model, p_ids, p_att, torch.tensor([0, 0]), ids, mask)
    plain = torch.log_softmax(logits, -1).gather(-1, ids[..., None]).squeeze(-1).masked_fill(~mask, 0.0)
    tiled = lm.token_log_probs("w1", ids, mask)
    torch.testing.assert_close(tiled, plain, atol=1e-10, rtol=1e-10)  # float64: rounding only
    grads = torch.autograd.grad(tiled.sum(), [p for p in model.parameters() if p.requires_grad])
    assert all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_the_head_check_passes_an_attention_mask(monkeypatch):
    # pad id 0 sits in the check's ids: without a mask transformers warned once per process
    # ("We strongly recommend passing in an attention_mask") during the demo and training
    from transformers import PreTrainedModel

    unmasked = []
    monkeypatch.setattr(PreTrainedModel, "warn_if_padding_and_no_attention_mask",
                        lambda self, ids, mask: unmasked.append(ids) if mask is None else None)
    lm = tiny_lm("gpt2", vocab_size=8, seed=7)  # gpt2 checks for padding in both calls
    assert lm.model.config.pad_token_id == 0
    assert lm_head.head_of(lm.model) is not None
    assert unmasked == []
