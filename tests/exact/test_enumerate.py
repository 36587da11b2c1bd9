"""Enumeration agrees with brute-force scoring, one sequence at a time, on two architectures; the prior
sampler's draws fit the enumerated prior."""

import itertools
import math

import pytest
import torch
from scipy.stats import chisquare

import bayes_rlhf as br
from bayes_rlhf.exact import count_completions, enumerate_completions
from bayes_rlhf.exact.enumerate import check_space, lexicographic_order
from bayes_rlhf.models.toy import tiny_lm
from tests.exact.conftest import binned_counts


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


def test_a_huge_horizon_is_refused_without_counting_it(gpt2_lm):
    # b^T for T = 5000 is a 4,500-digit integer (once a ValueError printing it; T = 10^6 took minutes)
    for T in (5000, 10 ** 6):
        with pytest.raises(br.SpaceTooLargeError, match=r"about 10\^[0-9,]+ completions"):
            check_space(gpt2_lm, T)
    with pytest.raises(br.SpaceTooLargeError, match="max_completions"):  # below the threshold: counted exactly
        check_space(gpt2_lm, 12, max_completions=1000)


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


# ---------------------------------------------------------------- k-only expansion, memory budget


def _brute_force_support(lm, prompt, T):
    """Every sequence that ends at EOS or at T, scored one at a time with the dense top-k softmax."""
    V, eos = lm.vocab_size, lm.eos_token_id
    seqs = []
    for t in range(1, T + 1):
        for seq in itertools.product(range(V), repeat=t):
            if eos in seq[:-1] or (t < T and seq[-1] != eos):
                continue
            seqs.append(seq)
    ids, mask = lm._pad_rows([list(s) for s in seqs], T)
    with torch.no_grad():
        lp = torch.stack([lm.token_log_probs(prompt, ids[i:i + 1], mask[i:i + 1]).sum() for i in range(len(seqs))])
    keep = torch.isfinite(lp)
    return {seqs[i]: lp[i].item() for i in torch.nonzero(keep).squeeze(-1).tolist()}


@pytest.mark.parametrize("arch, seed", [("gpt2", 3), ("llama", 1)])
def test_top_k_enumeration_equals_brute_force_with_eos_endings(arch, seed):
    lm = tiny_lm(arch, vocab_size=8, seed=seed, top_k=3)
    T = 4
    ids, mask, lp = enumerate_completions(lm, "w0 w4", T, batch_size=5)
    brute = _brute_force_support(lm, "w0 w4", T)
    table = {tuple(r[m].tolist()): v for r, m, v in zip(ids, mask, lp.tolist())}
    assert len(table) == ids.shape[0] == len(brute)  # the same support, none twice
    assert table.keys() == brute.keys()
    assert max(abs(table[s] - brute[s]) for s in brute) < 1e-9
    lengths = mask.sum(-1)
    assert bool((lengths < T).any()) and bool((lengths == 1).any())  # EOS endings, one at the root


def test_small_memory_budget_gives_identical_tables(monkeypatch):
    from bayes_rlhf.exact import enumerate as enum

    lm = tiny_lm("llama", vocab_size=8, seed=1, top_k=4)
    reference = enumerate_completions(lm, "w0 w4", 4)
    state, _ = lm.start("w0 w4")
    for budget in (1, 3000):
        planned = enum.walk_batch_size(lm, state, 4, 2048, budget)
        assert planned < 10
        sizes = []
        real_step = enum._step
        monkeypatch.setattr(enum, "_step", lambda lm_, st, tok: (sizes.append(tok.numel()), real_step(lm_, st, tok))[1])
        tables = enumerate_completions(lm, "w0 w4", 4, memory_budget=budget)
        monkeypatch.setattr(enum, "_step", real_step)
        assert max(sizes) <= planned  # the budget bounded every forward
        assert torch.equal(reference[0], tables[0]) and torch.equal(reference[1], tables[1])
        # a matmul's rounding depends on the batch shape: log-probs agree to float64 rounding
        assert torch.allclose(reference[2], tables[2], atol=1e-12, rtol=0)


def test_plan_batch_fits_the_budget():
    from bayes_rlhf.exact.budget import plan_batch, walk_bytes

    args = dict(T=6, cache_per_token=46080, prompt_len=7, logits_per_row=4 * 49152)
    B = plan_batch(2048, 2 << 30, branching=8, **args)
    caps = [8 ** d for d in range(6)]
    assert 1 < B < 2048
    fits = lambda b: walk_bytes(b, 6, 46080, 7, 4 * 49152, caps) <= 2 << 30  # noqa: E731
    assert fits(B) and not fits(B + 1)
    assert plan_batch(2048, 1, branching=8, **args) == 1  # never fewer than one row
    assert plan_batch(64, 1 << 40, branching=8, **args) == 64  # batch_size caps it


def test_kept_tokens_matches_dense_log_softmax_including_ties(gpt2_lm):
    from bayes_rlhf.exact.enumerate import kept_tokens

    lm = gpt2_lm.with_top_k(2)
    inf = float("inf")
    logits = torch.tensor([[0.5, 1.0, 3.0, -1.0, 2.0, 0.0, 0.1, 0.2],
                           [1.0, 2.0, 2.0, 2.0, 0.0, -inf, 0.0, 1.5],     # three-way tie at the 2nd value
                           [-inf, -inf, 4.0, -inf, -inf, -inf, -inf, -inf],  # one finite logit only
                           [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    rows, toks, lp = kept_tokens(lm, logits)
    dense = lm.log_softmax(logits)
    r, t = torch.nonzero(torch.isfinite(dense), as_tuple=True)
    assert torch.equal(rows, r) and torch.equal(toks, t)
    assert torch.allclose(lp, dense[r, t], atol=1e-12, rtol=0)
    assert rows.tolist().count(1) == 3 and rows.tolist().count(2) == 1 and rows.tolist().count(3) == 8


def test_support_restricted_model_enumerates_the_support(gpt2_lm):
    prior = gpt2_lm.with_top_k(3)
    restricted = gpt2_lm.with_support(prior)  # the same model on its own top-3 sets
    a, b = enumerate_completions(prior, "w1", 3), enumerate_completions(restricted, "w1", 3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.allclose(a[2], b[2], atol=1e-12, rtol=0)


def test_unsorted_main_leaves_fall_back_to_a_full_sort(gpt2_lm, monkeypatch):
    from bayes_rlhf.exact import leaves

    reference = enumerate_completions(gpt2_lm, "w1", 3)
    monkeypatch.setattr(leaves.Leaves, "_units", lambda self, early: None)
    for a, b in zip(reference, enumerate_completions(gpt2_lm, "w1", 3)):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- progress bar, size guard


class _Bar:
    made = []

    def __init__(self, total=None, **kwargs):
        self.total, self.n = total, 0
        _Bar.made.append(self)

    def update(self, k):
        self.n += k

    def refresh(self):
        pass

    def close(self):
        self.closed = True


@pytest.mark.parametrize("top_k", [None, 3])
def test_progress_bar_ends_at_its_total(gpt2_lm, monkeypatch, top_k):
    from bayes_rlhf.exact import enumerate as enum

    monkeypatch.setattr(enum, "tqdm", _Bar)
    _Bar.made.clear()
    enumerate_completions(gpt2_lm.with_top_k(top_k), "w1", 3, batch_size=7, progress=True)
    bar = _Bar.made[-1]
    assert bar.closed and bar.n == bar.total
    if top_k is None:  # full vocabulary: every prefix of the full tree, the prompt included
        assert bar.n == count_completions(8, 3, has_eos=True)[1]


def test_size_guard_compares_bytes_with_available_memory(monkeypatch):
    from bayes_rlhf.exact import enumerate as enum
    from bayes_rlhf.exact.budget import table_bytes

    lm = tiny_lm("gpt2", vocab_size=16, seed=0)
    leaves = count_completions(16, 6, has_eos=True)[0]  # 12.2M completions
    monkeypatch.setattr(enum, "available_memory", lambda: 64 << 30)
    assert enum.check_space(lm, 6)[0] == leaves > 1 << 22  # fits: the old fixed 4M count refused it
    assert enum.check_space(lm, 6, enum.DEFAULT_MAX_COMPLETIONS)[0] == leaves
    monkeypatch.setattr(enum, "available_memory", lambda: 1 << 30)
    with pytest.raises(br.SpaceTooLargeError) as info:
        enum.check_space(lm, 6)
    message = str(info.value)
    assert "1.0 GB is available" in message and "needs about" in message and "max_completions" in message
    assert f"{table_bytes(leaves, 6) / (1 << 30):.1f} GB" in message
    assert enum.check_space(lm, 6, max_completions=leaves)[0] == leaves  # the explicit override wins
    with pytest.raises(br.SpaceTooLargeError, match="max_completions=100"):
        enum.check_space(lm, 6, max_completions=100)


def test_default_max_completions_still_importable():
    from bayes_rlhf.exact.enumerate import DEFAULT_MAX_COMPLETIONS, check_space  # noqa: F401 - used by the CLI

    assert DEFAULT_MAX_COMPLETIONS is None  # None: decided from the memory available


def test_prior_sampler_matches_enumerated_prior(gpt2_lm):
    post = br.exact_posterior(br.Target(gpt2_lm, lambda p, c: [0.0] * len(c), 1.0, 3), "w1")
    s = gpt2_lm.sample("w1", 8000, 3, generator=torch.Generator().manual_seed(1))
    obs, exp = binned_counts(post, s.ids, s.mask, n_bins=10)
    assert chisquare(obs, exp).pvalue > 1e-3
    # the sampler's log-probs equal the enumerated ones
    k = post.index_of(s.ids[0][s.mask[0]].tolist())
    assert math.isclose(float(s.log_probs[0]), float(post.prior_log_probs[k]), abs_tol=1e-9)
