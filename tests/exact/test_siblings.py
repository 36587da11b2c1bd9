"""The sibling step (children as one query block over their parent's row) gives the one-token
step's logits, and the walk gives the same table with it as without it."""

import pytest
import torch
from transformers import AttentionInterface

import bayes_rlhf.exact.enumerate as enumerate_module
from bayes_rlhf.exact import siblings
from bayes_rlhf.exact.enumerate import _step, enumerate_completions
from bayes_rlhf.exact.siblings import sibling_check, sibling_logits
from bayes_rlhf.models.toy import tiny_lm


def _one_token(lm, state, rows, toks):
    return _step(lm, state.reindex(rows), toks)[1]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_sibling_logits_match_one_token_steps(arch):
    lm = tiny_lm(arch, vocab_size=8, seed=4)  # float64
    state, _ = lm.start("w0 w3")
    state, _ = lm.step(state.reindex(torch.tensor([0, 0, 0])), torch.tensor([1, 2, 5]))
    rows = torch.tensor([0, 0, 1, 2, 2, 2])  # unequal sibling counts: padded query blocks
    toks = torch.tensor([3, 6, 0, 1, 4, 7])
    got = sibling_logits(lm, state, rows, toks)
    assert got is not None and got.shape == (6, 8)
    assert torch.allclose(got, _one_token(lm, state, rows, toks), atol=1e-12, rtol=0)
    assert sibling_check(lm, state, rows, toks, lambda st, r, t: _one_token(lm, st, r, t))


def test_sibling_step_declines_heavy_padding_and_flags_disagreement(gpt2_lm):
    state, _ = gpt2_lm.start("w1")
    state, _ = gpt2_lm.step(state.reindex(torch.tensor([0, 0, 0])), torch.tensor([1, 2, 3]))
    rows, toks = torch.tensor([0, 1, 2, 2, 2, 2]), torch.tensor([1, 1, 1, 2, 3, 4])
    assert sibling_logits(gpt2_lm, state, rows, toks) is None  # 3 x 4 padded > 1.5 x 6 rows
    rows, toks = torch.tensor([0, 0, 1, 1]), torch.tensor([1, 2, 1, 2])
    wrong = lambda st, r, t: _one_token(gpt2_lm, st, r, t) + 1e-2  # noqa: E731 - a model the check must reject
    assert not sibling_check(gpt2_lm, state, rows, toks, wrong)


@pytest.mark.parametrize("arch, top_k", [("gpt2", None), ("llama", 3), ("gpt2", 4)])
def test_walk_with_and_without_sibling_step_agree(arch, top_k, monkeypatch):
    lm = tiny_lm(arch, vocab_size=8, seed=1, top_k=top_k)
    calls = []
    monkeypatch.setattr(enumerate_module, "sibling_logits",
                        lambda *a: calls.append(1) or sibling_logits(*a))
    ids, mask, lp = enumerate_completions(lm, "w0 w4", 4, batch_size=23)
    assert calls  # the sibling step ran
    monkeypatch.setattr(enumerate_module, "SIBLING_STEP", False)
    ids0, mask0, lp0 = enumerate_completions(lm, "w0 w4", 4, batch_size=23)
    assert torch.equal(ids, ids0) and torch.equal(mask, mask0)
    assert torch.allclose(lp, lp0, atol=1e-12, rtol=0)


def test_sibling_logits_over_parents_that_are_not_consecutive():
    lm = tiny_lm("llama", vocab_size=8, seed=2)  # grouped-query attention (2 heads, 1 kv head)
    state, _ = lm.start("w1 w2")
    state, _ = lm.step(state.reindex(torch.tensor([0, 0, 0, 0])), torch.tensor([1, 3, 4, 6]))
    rows, toks = torch.tensor([0, 0, 2, 2, 3]), torch.tensor([5, 7, 1, 2, 3])  # row 1 has no child
    got = sibling_logits(lm, state, rows, toks)
    assert got is not None
    assert torch.allclose(got, _one_token(lm, state, rows, toks), atol=1e-12, rtol=0)


def test_sibling_forward_restores_the_attention_implementation(gpt2_lm):
    config = gpt2_lm.model.config
    before = config._attn_implementation
    state, _ = gpt2_lm.start("w1")
    state, _ = gpt2_lm.step(state.reindex(torch.tensor([0, 0])), torch.tensor([1, 2]))
    assert sibling_logits(gpt2_lm, state, torch.tensor([0, 0, 1]), torch.tensor([1, 2, 3])) is not None
    assert config._attn_implementation == before
    # outside a sibling forward (or asked for what it does not implement) the attention declines
    q = torch.zeros(1, 2, 1, 4)
    with pytest.raises(siblings._Declined):
        siblings._sibling_attention(gpt2_lm.model.transformer.h[0].attn, q, q, q, None)


def test_sibling_check_rejects_a_model_the_sibling_attention_declines(gpt2_lm, monkeypatch):
    def declining(module, *a, **kw):
        raise siblings._Declined

    monkeypatch.setitem(AttentionInterface._global_mapping, siblings._IMPLEMENTATION, declining)
    state, _ = gpt2_lm.start("w1")
    state, _ = gpt2_lm.step(state.reindex(torch.tensor([0, 0])), torch.tensor([1, 2]))
    rows, toks = torch.tensor([0, 0, 1]), torch.tensor([1, 2, 3])
    assert not sibling_check(gpt2_lm, state, rows, toks, lambda st, r, t: _one_token(gpt2_lm, st, r, t))
    assert gpt2_lm.model.config._attn_implementation != siblings._IMPLEMENTATION
