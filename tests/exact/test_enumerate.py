"""Enumeration agrees with brute-force scoring, one sequence at a time, on two architectures."""

import math

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.exact import count_completions, enumerate_completions
from bayes_rlhf.exact.enumerate import lexicographic_order
from bayes_rlhf.models.toy import tiny_lm


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_enumeration_matches_one_at_a_time_scoring(arch):
    lm = tiny_lm(arch, vocab_size=8, seed=3)
    T = 3
    ids, mask, lp = enumerate_completions(lm, "w0 w4", T, batch_size=37)  # odd batch: chunk edges
    leaves, _ = count_completions(8, T, has_eos=True)
    assert ids.shape == (leaves, T)  # every sequence of the full tree, none twice
    assert len({tuple(r[m].tolist()) for r, m in zip(ids, mask)}) == leaves
    with torch.no_grad():
        brute = torch.stack([lm.token_log_probs("w0 w4", ids[i:i + 1], mask[i:i + 1]).sum()
                             for i in range(ids.shape[0])])
    assert torch.allclose(lp, brute, atol=1e-9, rtol=0)
    assert abs(torch.logsumexp(lp, 0).item()) < 1e-9  # prior probabilities sum to 1


def test_batched_scoring_matches_enumeration(gpt2_lm):
    ids, mask, lp = enumerate_completions(gpt2_lm, "w1", 3)
    assert torch.allclose(gpt2_lm.score("w1", ids, mask, batch_size=50).sum(-1), lp, atol=1e-9, rtol=0)


def test_completions_end_at_eos_or_T(gpt2_lm):
    ids, mask, _ = enumerate_completions(gpt2_lm, "w1", 3)
    eos = gpt2_lm.eos_token_id
    lengths = mask.sum(-1)
    last = ids[torch.arange(ids.shape[0]), lengths - 1]
    assert bool(((last == eos) | (lengths == 3)).all())
    inner = mask.clone()
    inner[torch.arange(ids.shape[0]), lengths - 1] = False
    assert not bool(((ids == eos) & inner).any())  # no EOS before the end
    assert bool((ids[~mask] == gpt2_lm.pad_id).all())


def test_table_is_lexicographically_sorted(gpt2_lm):
    ids, mask, _ = enumerate_completions(gpt2_lm, "w1", 3)
    rows = [tuple(r[m].tolist()) for r, m in zip(ids, mask)]
    assert rows == sorted(rows)


def test_lexicographic_order_fallback_agrees_with_integer_key():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (500, 4), generator=g)
    mask = torch.rand(500, 4, generator=g) > 0.2
    mask = mask.cummin(dim=1).values
    ids = torch.where(mask, ids, 0)
    small = lexicographic_order(ids, mask, 50)
    large = lexicographic_order(ids, mask, 1 << 20)  # forces the column-by-column stable sort
    rows = [tuple(r[m].tolist()) for r, m in zip(ids, mask)]
    assert [rows[i] for i in small.tolist()] == sorted(rows) == [rows[i] for i in large.tolist()]


def test_top_k_truncation_enumerates_truncated_support(gpt2_lm):
    lm = gpt2_lm.with_top_k(3)
    ids, mask, lp = enumerate_completions(lm, "w1", 4)
    assert ids.shape[0] <= count_completions(3, 4, has_eos=False)[0]
    assert abs(torch.logsumexp(lp, 0).item()) < 1e-9
    assert torch.allclose(lm.score("w1", ids, mask).sum(-1), lp, atol=1e-9, rtol=0)


def test_space_too_large_is_refused_before_work(gpt2_lm, reward):
    target = br.Target(gpt2_lm, reward, 1.0, 12)
    with pytest.raises(br.SpaceTooLargeError, match="max_new_tokens=12"):
        br.exact_posterior(target, "w1")
    with pytest.raises(br.SpaceTooLargeError, match="top_k"):
        br.exact_posterior(br.Target(gpt2_lm, reward, 1.0, 4), "w1", max_completions=100)


def test_count_completions_formula():
    assert count_completions(2, 2, has_eos=True)[0] == 1 + 1 + 1  # E, aE, aa
    assert count_completions(3, 2, has_eos=False) == (9, 4)
    assert math.isclose(count_completions(8, 3, True)[0], 1 + 7 + 49 + 343)


def test_unkeyed_assembly_matches_keyed(gpt2_lm, monkeypatch):
    """Long completions fall back to a column-wise sort; both paths give the same table."""
    from bayes_rlhf.exact import enumerate as enum

    keyed = enumerate_completions(gpt2_lm, "w1", 3)
    monkeypatch.setattr(enum.Leaves, "keyed", property(lambda self: False))
    unkeyed = enumerate_completions(gpt2_lm, "w1", 3)
    for a, b in zip(keyed, unkeyed):
        assert torch.equal(a, b)
