"""Target validation and its log density."""

import math

import numpy as np
import pytest
import torch

import bayes_rlhf as br


@pytest.mark.parametrize("beta", [0, -1.0, math.nan, math.inf, "1", True, np.bool_(True), np.float32("nan")])
def test_bad_beta(gpt2_lm, reward, beta):
    with pytest.raises(br.ConfigError, match="beta"):
        br.Target(gpt2_lm, reward, beta, 3)


@pytest.mark.parametrize("T", [0, -2, 2.5, None, True, "3", np.float64(3.0), np.int64(0)])
def test_bad_max_new_tokens(gpt2_lm, reward, T):
    with pytest.raises(br.ConfigError, match="max_new_tokens"):
        br.Target(gpt2_lm, reward, 1.0, T)


def test_bad_prior_and_reward(gpt2_lm, reward):
    with pytest.raises(br.ConfigError, match="CausalLM"):
        br.Target(gpt2_lm.model, reward, 1.0, 3)
    with pytest.raises(br.ConfigError, match="reward"):
        br.Target(gpt2_lm, 3.0, 1.0, 3)


def test_target_is_frozen(gpt2_target):
    with pytest.raises(Exception):
        gpt2_target.beta = 2.0


def test_log_density_matches_posterior(gpt2_target, gpt2_post):
    ids, mask = gpt2_post.completion_ids[:20], gpt2_post.mask[:20]
    ld = gpt2_target.log_density(gpt2_post.prompt, ids, mask)
    assert torch.allclose(ld - gpt2_post.log_z, gpt2_post.log_probs[:20], atol=1e-9)


def test_numpy_numbers_accepted_as_python_numbers(gpt2_target, gpt2_post):
    t = br.Target(gpt2_target.prior, gpt2_target.reward, np.float64(0.7), np.int64(4))
    assert t == gpt2_target and type(t.beta) is float and type(t.max_new_tokens) is int
    t32 = br.Target(gpt2_target.prior, gpt2_target.reward, np.float32(0.5), np.int32(4))
    assert t32.beta == 0.5 and type(t32.beta) is float
    ids, mask = gpt2_post.completion_ids[:20], gpt2_post.mask[:20]
    assert torch.equal(t.log_density(gpt2_post.prompt, ids, mask), gpt2_target.log_density(gpt2_post.prompt, ids, mask))
    post = br.exact_posterior(t, gpt2_post.prompt)
    assert post.log_z == gpt2_post.log_z
