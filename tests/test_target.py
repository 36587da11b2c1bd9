"""Target validation and its log density."""

import math

import pytest
import torch

import bayes_rlhf as br


@pytest.mark.parametrize("beta", [0, -1.0, math.nan, math.inf, "1", True])
def test_bad_beta(gpt2_lm, reward, beta):
    with pytest.raises(br.ConfigError, match="beta"):
        br.Target(gpt2_lm, reward, beta, 3)


@pytest.mark.parametrize("T", [0, -2, 2.5, None])
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
