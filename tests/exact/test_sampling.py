"""Exact samples and exact rejection samples pass chi-square goodness-of-fit against the table."""

import math

import pytest
import torch
from scipy.stats import chisquare

import bayes_rlhf as br


def _binned_counts(post, ids, mask, n_bins=15):
    """Counts over the n_bins most probable completions plus one bin for the rest, and expected."""
    top = torch.topk(post.log_probs, n_bins).indices.tolist()
    index = {tuple(post.completion_ids[k][post.mask[k]].tolist()): b for b, k in enumerate(top)}
    counts = torch.zeros(n_bins + 1)
    for r, m in zip(ids.tolist(), mask.tolist()):
        counts[index.get(tuple(t for t, keep in zip(r, m) if keep), n_bins)] += 1
    p = post.probs[top]
    expected = torch.cat([p, (1 - p.sum()).reshape(1)]) * ids.shape[0]
    return counts.numpy(), expected.numpy()


def test_exact_samples_chi_square(gpt2_post):
    s = gpt2_post.sample(20000, generator=torch.Generator().manual_seed(0))
    obs, exp = _binned_counts(gpt2_post, s.ids, s.mask)
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


def test_prior_sampler_matches_enumerated_prior(gpt2_lm):
    post = br.exact_posterior(br.Target(gpt2_lm, lambda p, c: [0.0] * len(c), 1.0, 3), "w1")
    s = gpt2_lm.sample("w1", 8000, 3, generator=torch.Generator().manual_seed(1))
    obs, exp = _binned_counts(post, s.ids, s.mask, n_bins=10)
    assert chisquare(obs, exp).pvalue > 1e-3
    # the sampler's log-probs equal the enumerated ones
    k = post.index_of(s.ids[0][s.mask[0]].tolist())
    assert math.isclose(float(s.log_probs[0]), float(post.prior_log_probs[k]), abs_tol=1e-9)


@pytest.fixture(scope="module")
def rejection_setup(gpt2_lm):
    def fn(ids, mask):
        return 1.5 * ((ids == 3) & mask).sum(-1).double()

    target = br.Target(gpt2_lm, br.TokenReward(fn, name="w0_count"), 1.0, 3)
    return target, br.exact_posterior(target, "w1")


def test_exact_rejection_chi_square_and_rate(rejection_setup):
    target, post = rejection_setup
    res = br.exact_rejection_sample(target, "w1", 4000, reward_max=4.5, generator=torch.Generator().manual_seed(2))
    assert res.samples.ids.shape[0] == 4000
    obs, exp = _binned_counts(post, res.samples.ids, res.samples.mask, n_bins=10)
    assert chisquare(obs, exp).pvalue > 1e-3
    # acceptance rate = Z exp(-r_max / beta); binomial SE sqrt(a (1 - a) / N)
    a = math.exp(post.log_z - 4.5)
    se = math.sqrt(a * (1 - a) / res.num_proposals)
    assert abs(res.acceptance_rate - a) < 4 * se


def test_rejection_bad_bound_and_input(rejection_setup):
    target, _ = rejection_setup
    with pytest.raises(br.RewardError, match="reward_max"):
        br.exact_rejection_sample(target, "w1", 10, reward_max=0.5, generator=torch.Generator().manual_seed(0))
    with pytest.raises(br.ConfigError):
        br.exact_rejection_sample(target, "w1", 0, reward_max=4.5)
    with pytest.raises(br.ConfigError, match="max_proposals"):
        br.exact_rejection_sample(target, "w1", 10, reward_max=60.0, max_proposals=512,
                                  generator=torch.Generator().manual_seed(0))
