"""The exact posterior: normalisation (sliced, against whole-table logsumexps), token-level posterior, soft
values, expectations, and exact samples (chi-square goodness-of-fit against the table)."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

import bayes_rlhf as br
import bayes_rlhf.exact.posterior as posterior
from bayes_rlhf import ExactPosterior
from tests.exact.conftest import binned_counts


def test_posterior_normalised_and_log_z(gpt2_post, gpt2_target):
    post = gpt2_post
    assert abs(float(post.probs.sum()) - 1.0) < 1e-12
    lw = post.prior_log_probs + post.rewards / gpt2_target.beta
    assert math.isclose(post.log_z, float(torch.logsumexp(lw, 0)), abs_tol=1e-12)
    # log Z = log E_pi0[exp(r / beta)] computed directly
    z = float((post.prior_log_probs.exp() * (post.rewards / gpt2_target.beta).exp()).sum())
    assert math.isclose(post.log_z, math.log(z), rel_tol=1e-10)


def _marginal(post, prefix):
    """pi*(v | prefix) by a plain loop over the table."""
    num = torch.zeros(post.lm.vocab_size, dtype=torch.float64)
    for row, m, p in zip(post.completion_ids.tolist(), post.mask.tolist(), post.probs.tolist()):
        toks = [t for t, keep in zip(row, m) if keep]
        if toks[: len(prefix)] == list(prefix) and len(toks) > len(prefix):
            num[toks[len(prefix)]] += p
    return num / num.sum()


@pytest.mark.parametrize("prefix", [(), (3,), (4, 3), (3, 3, 5)])
def test_token_posterior_matches_table_marginals(gpt2_post, prefix):
    assert torch.allclose(gpt2_post.token_posterior(prefix), _marginal(gpt2_post, prefix), atol=1e-12)


@pytest.mark.parametrize("prefix", [(), (3,), (6, 4)])
def test_token_posterior_is_prior_tilted_by_soft_values(gpt2_post, gpt2_target, prefix):
    """pi*(v | x_<t) = pi0(v | x_<t) exp((V_t - V_{t-1}) / beta), with pi0 from the model itself."""
    lm, beta = gpt2_target.prior, gpt2_target.beta
    state, logp = lm.start(gpt2_post.prompt)
    for tok in prefix:
        state, logp = lm.step(state, torch.tensor([tok]))
    v_prev = gpt2_post.soft_value(prefix)
    values = torch.tensor([gpt2_post.soft_value(list(prefix) + [v]) for v in range(lm.vocab_size)])
    expected = logp[0].exp() * torch.exp((values - v_prev) / beta)
    assert torch.allclose(gpt2_post.token_posterior(prefix), expected, atol=1e-10)


def test_soft_values_endpoints(gpt2_post):
    k = int(torch.argmax(gpt2_post.log_probs))
    ids = gpt2_post.completion_ids[k][gpt2_post.mask[k]].tolist()
    v = gpt2_post.soft_values(ids)
    assert math.isclose(float(v[0]), gpt2_post.optimal_objective, rel_tol=1e-12)
    assert math.isclose(float(v[-1]), float(gpt2_post.rewards[k]), abs_tol=1e-10)


def test_expectations_agree_with_definitions(gpt2_post):
    p, lp, lp0 = gpt2_post.probs, gpt2_post.log_probs, gpt2_post.prior_log_probs
    kl = float((p * (lp - lp0)).sum())
    assert math.isclose(gpt2_post.kl_to_prior, kl, rel_tol=1e-9)
    assert math.isclose(gpt2_post.entropy, float(-(p * lp).sum()), rel_tol=1e-12)
    # the optimum of E_q[r] - beta KL(q || pi0) is attained at pi*
    assert math.isclose(gpt2_post.mean_reward - gpt2_post.beta * kl, gpt2_post.optimal_objective, rel_tol=1e-9)


def test_probability_lookup_by_ids_and_text(gpt2_post):
    k = 123
    ids = gpt2_post.completion_ids[k][gpt2_post.mask[k]].tolist()
    assert math.isclose(gpt2_post.probability(ids), float(gpt2_post.probs[k]), rel_tol=1e-12)
    # a completion made of plain words, ended by length: its text maps back to the same row
    words = ((gpt2_post.completion_ids >= 3) & gpt2_post.mask).sum(-1) == gpt2_post.completion_ids.shape[1]
    j = int(torch.nonzero(words)[5])
    text = gpt2_post.completions[j]
    assert math.isclose(gpt2_post.probability(text), float(gpt2_post.probs[j]), rel_tol=1e-12)
    assert gpt2_post.probability([3, 3, 3, 3, 3, 3]) == 0.0  # longer than T: not in the space


def test_prefix_errors(gpt2_post):
    with pytest.raises(br.PromptError, match="EOS"):
        gpt2_post.token_posterior([gpt2_post.lm.eos_token_id])
    with pytest.raises(br.PromptError, match="shorter"):
        gpt2_post.token_posterior([3, 3, 3, 3])


@pytest.mark.parametrize("ids", [[3, 16], [-1], [3, 2.0], [3.7], torch.tensor([3.0]), torch.ones(1, 1, dtype=torch.long)])
def test_token_ids_outside_the_vocabulary_or_not_ints_are_refused(gpt2_post, ids):
    # token ids in [0, V) only: an id past the vocabulary (V = 16), negative or a float is a
    # wrong value, not a completion of probability zero (int() would have truncated 2.0 and 3.7)
    for query in (gpt2_post.token_posterior, gpt2_post.token_prior, gpt2_post.soft_value, gpt2_post.log_prob):
        with pytest.raises(br.PromptError, match="token ids must be"):
            query(ids)
    with pytest.raises(br.PromptError, match="token ids must be"):  # text is for log_prob, not for prefixes
        gpt2_post.token_posterior("w3")


def test_token_ids_as_numpy_and_tensor_elements_are_read(gpt2_post):
    prefix = [3, 4]
    expected = gpt2_post.token_posterior(prefix)
    for ids in (np.array(prefix), torch.tensor(prefix), [torch.tensor(3), np.int64(4)]):
        assert torch.equal(gpt2_post.token_posterior(ids), expected)
    assert gpt2_post.soft_value(torch.tensor(prefix)) == gpt2_post.soft_value(prefix)


def test_top_and_summary(gpt2_post):
    top = gpt2_post.top(3)
    assert len(top) == 3 and top[0]["posterior"] >= top[1]["posterior"] >= top[2]["posterior"]
    s = gpt2_post.summary()
    assert s["num_completions"] == gpt2_post.num_completions and math.isfinite(s["log_z"])


def test_hard_constraint_zeroes_mass(gpt2_lm):
    no_w0 = br.Constraint(lambda ids, mask: ~((ids == 3) & mask).any(-1), on="tokens", name="no_w0")
    post = br.exact_posterior(br.Target(gpt2_lm, no_w0, 1.0, 3), "w1")
    has_w0 = ((post.completion_ids == 3) & post.mask).any(-1)
    assert float(post.probs[has_w0].sum()) == 0.0
    # Z = prior mass of the allowed set
    assert math.isclose(math.exp(post.log_z), float(post.prior_log_probs[~has_w0].exp().sum()), rel_tol=1e-12)
    assert post.prior_mean_reward == -math.inf and post.mean_reward == 0.0


@pytest.mark.parametrize("k", [-1, 0, 2.5, "3", True, None])
def test_top_refuses_bad_k(gpt2_post, k):
    with pytest.raises(br.ConfigError, match="k must be an integer >= 1"):
        gpt2_post.top(k)


def test_top_by_and_numpy_k(gpt2_post):
    with pytest.raises(br.ConfigError, match="by must be"):
        gpt2_post.top(3, by="likelihood")
    assert gpt2_post.top(np.int64(3)) == gpt2_post.top(3)
    assert gpt2_post.top(3, by="prior")[0]["prior"] == float(gpt2_post.prior_log_probs.exp().max())
    assert len(gpt2_post.top(10 ** 6)) == gpt2_post.num_completions  # k beyond the table: every row


def test_repr_is_a_one_line_summary(gpt2_post):
    r = repr(gpt2_post)
    assert "\n" not in r and "tensor" not in r and len(r) < 200
    for part in (f"prompt={gpt2_post.prompt!r}", f"num_completions={gpt2_post.num_completions}",
                 f"beta={gpt2_post.beta:g}", "log_z=", f"max_new_tokens={gpt2_post.completion_ids.shape[1]}"):
        assert part in r
    assert math.isclose(float(r.split("log_z=")[1].split(",")[0]), gpt2_post.log_z, rel_tol=1e-5)


def test_sample_checks_and_marks_samples_exact(gpt2_post):
    for n in (0, -2, 1.5, True):
        with pytest.raises(br.ConfigError, match="n must be an integer >= 1"):
            gpt2_post.sample(n)
    with pytest.raises(br.ConfigError, match=r"torch\.Generator\(\)\.manual_seed"):
        gpt2_post.sample(4, generator=123)
    a = gpt2_post.sample(5, generator=torch.Generator().manual_seed(0))
    b = gpt2_post.sample(np.int64(5), generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.ids, b.ids) and a.source == "exact" and a.select(torch.tensor([0, 2])).source == "exact"


@pytest.mark.parametrize("slice_rows", [7, 1 << 16])  # many slices, a ragged last one; one slice
@pytest.mark.parametrize("offset", [0.0, 3e-7, 0.5])  # exact, float32 rounding (renormalised), not a table
def test_sliced_normalisation_matches_direct(gpt2_post, monkeypatch, slice_rows, offset):
    monkeypatch.setattr(posterior, "_SLICE", slice_rows)
    l0 = gpt2_post.prior_log_probs + offset
    r = gpt2_post.rewards.clone()
    r[::5] = -math.inf  # hard-constraint rows
    post = ExactPosterior(gpt2_post.prompt, gpt2_post.completion_ids, gpt2_post.mask, l0, r, 0.7,
                          vocabulary=gpt2_post.vocabulary)
    total = float(torch.logsumexp(l0, 0))
    prior = l0 - total if abs(total) < 1e-4 else l0
    lw = prior + r / 0.7
    log_z = float(torch.logsumexp(lw, 0))
    assert torch.allclose(post.prior_log_probs, prior, atol=1e-14, rtol=0)
    assert math.isclose(post.log_z, log_z, abs_tol=1e-13)
    assert torch.allclose(post.log_probs, lw - log_z, atol=1e-13, rtol=0)
    assert abs(float(post.probs.sum()) - 1.0) < 1e-12
    assert post.prior_log_probs is not l0 or offset == 0.5  # the caller's tensor is not shifted in place
    assert torch.equal(l0, gpt2_post.prior_log_probs + offset)


def test_sliced_logsumexp_of_all_minus_inf_is_minus_inf(monkeypatch):
    monkeypatch.setattr(posterior, "_SLICE", 3)
    assert posterior._logsumexp(torch.full((10,), -math.inf, dtype=torch.float64)) == -math.inf
    assert posterior._logsumexp(torch.zeros(0, dtype=torch.float64)) == -math.inf


def test_exact_samples_chi_square(gpt2_post):
    s = gpt2_post.sample(20000, generator=torch.Generator().manual_seed(0))
    obs, exp = binned_counts(gpt2_post, s.ids, s.mask)
    assert exp.min() > 5  # chi-square approximation valid
    # a p-value below 1e-3 would reject the sampler; fixed seed makes the test deterministic
    assert chisquare(obs, exp).pvalue > 1e-3
    # log_probs returned are the posterior's
    k = gpt2_post.index_of(s.ids[0][s.mask[0]].tolist())
    assert math.isclose(float(s.log_probs[0]), float(gpt2_post.log_probs[k]))


def test_sampling_is_reproducible(gpt2_post):
    a = gpt2_post.sample(50, generator=torch.Generator().manual_seed(7))
    b = gpt2_post.sample(50, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.ids, b.ids)
