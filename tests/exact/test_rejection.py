"""Exact rejection samples pass chi-square goodness-of-fit against the table, at the acceptance rate
Z exp(-r_max / beta); bad bounds and inputs are refused."""

import math

import pytest
import torch
from scipy.stats import chisquare

import bayes_rlhf as br
from tests.exact.conftest import binned_counts


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
    obs, exp = binned_counts(post, res.samples.ids, res.samples.mask, n_bins=10)
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
