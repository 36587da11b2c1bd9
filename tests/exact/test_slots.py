"""The walk's slot re-index gives the plain re-index's numbers, and steps on like a plain cache."""

import pytest
import torch

from bayes_rlhf.exact.enumerate import _step
from bayes_rlhf.exact.slots import _SlotLayer, slot_reindex
from bayes_rlhf.models.toy import tiny_lm


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_slot_reindex_matches_plain_reindex(arch):
    lm = tiny_lm(arch, vocab_size=8, seed=2)
    state, _ = lm.start("w0 w3")
    state, _ = lm.step(state, torch.tensor([1]))
    idx = torch.tensor([0, 0, 0])
    toks = torch.tensor([2, 5, 6])
    plain, plain_logits = _step(lm, state.reindex(idx), toks)
    slot = slot_reindex(state, idx)
    assert slot is not None and all(isinstance(layer, _SlotLayer) for layer in slot.cache.layers)
    assert slot.cache.get_seq_length() == state.cache.get_seq_length()
    slot, slot_logits = _step(lm, slot, toks)
    assert torch.equal(plain_logits, slot_logits)  # the same values in the same layout
    for a, b in zip(plain.cache.layers, slot.cache.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    # the source state is untouched, and a second step on the slot state (no free slot) concatenates
    again, logits = _step(lm, slot_reindex(slot, torch.tensor([2, 0])), torch.tensor([3, 3]))
    ref, ref_logits = _step(lm, plain.reindex(torch.tensor([2, 0])), torch.tensor([3, 3]))
    assert torch.equal(logits, ref_logits)
    _, more = lm.step(again, torch.tensor([1, 1]))  # lm.step forks the cache: a plain update
    _, ref_more = lm.step(ref, torch.tensor([1, 1]))
    assert torch.equal(more, ref_more)


def test_slot_reindex_declines_other_caches(gpt2_lm):
    state, _ = gpt2_lm.start("w1")
    restricted = type(state)(state.cache, state.attention_mask, state.positions, support=state)
    assert slot_reindex(restricted, torch.tensor([0])) is None  # a support model's rows travel beside
    odd = type(state)(object(), state.attention_mask, state.positions)
    assert slot_reindex(odd, torch.tensor([0])) is None  # not a DynamicCache
