"""compare(policy, posterior): exact KL both ways, TV and the RL objective."""

import math

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.models.toy import tiny_lm


def test_prior_as_policy(gpt2_post, gpt2_lm):
    c = br.compare(gpt2_lm, gpt2_post)
    p0, lp0 = gpt2_post.prior_log_probs.exp(), gpt2_post.prior_log_probs
    # KL(pi0 || pi*) = log Z - E_0[r] / beta
    assert math.isclose(c.kl_q_posterior, gpt2_post.log_z - gpt2_post.prior_mean_reward / gpt2_post.beta, rel_tol=1e-9)
    assert math.isclose(c.kl_posterior_q, gpt2_post.kl_to_prior, rel_tol=1e-9)
    assert abs(c.kl_q_prior) < 1e-12 and c.q_outside < 1e-12
    # J(q) = beta (log Z - KL(q || pi*))
    assert math.isclose(c.objective, gpt2_post.beta * (gpt2_post.log_z - c.kl_q_posterior), rel_tol=1e-9)
    assert math.isclose(c.total_variation, 0.5 * float((p0 - gpt2_post.probs).abs().sum()), rel_tol=1e-12)
    assert c.objective < c.optimal_objective


def test_posterior_as_policy_is_optimal(gpt2_post):
    c = br.compare(gpt2_post.log_probs, gpt2_post)
    assert abs(c.kl_q_posterior) < 1e-12 and abs(c.kl_posterior_q) < 1e-12 and c.total_variation < 1e-12
    assert math.isclose(c.objective, c.optimal_objective, rel_tol=1e-9)


def test_another_model_same_tokenizer(gpt2_post):
    other = tiny_lm("gpt2", vocab_size=8, seed=11)
    c = br.compare(other, gpt2_post)
    assert c.kl_q_posterior > 0 and c.kl_posterior_q > 0 and 0 < c.total_variation < 1
    assert math.isclose(c.objective, gpt2_post.beta * (gpt2_post.log_z - c.kl_q_posterior), rel_tol=1e-9)


def test_mass_outside_support_gives_infinite_kl(gpt2_lm, reward):
    post = br.exact_posterior(br.Target(gpt2_lm.with_top_k(3), reward, 0.7, 3), "w1")
    c = br.compare(gpt2_lm, post)
    assert c.q_outside > 0.01 and c.kl_q_posterior == math.inf and math.isfinite(c.kl_posterior_q)


def test_tokenizer_mismatch(gpt2_post):
    other = tiny_lm("gpt2", vocab_size=9, seed=0)
    with pytest.raises(br.TokenizerMismatchError):
        br.compare(other, gpt2_post)


def test_mass_outside_support_reports_no_partial_sums(gpt2_lm, reward):
    # q (untruncated) has mass outside the top-3 table: E_q[r] is unknown and KL(q || pi0) is
    # infinite, not the partial sums over the table (which once printed as a negative "KL").
    post = br.exact_posterior(br.Target(gpt2_lm.with_top_k(3), reward, 0.7, 3), "w1")
    c = br.compare(gpt2_lm, post)
    assert math.isnan(c.mean_reward) and c.kl_q_prior == math.inf and c.objective == -math.inf
    restricted = br.compare(gpt2_lm.with_support(post.lm), post)
    assert restricted.q_outside == 0 and math.isfinite(restricted.kl_q_posterior)
    assert restricted.kl_q_prior >= 0 and math.isfinite(restricted.mean_reward)


def test_float32_rounding_of_the_prior_is_not_a_negative_kl(gpt2_post):
    import torch

    # a float32 table whose masses sum to about 1 + 4e-9, and a reward that tilts nothing
    l0 = gpt2_post.prior_log_probs.float()
    l0 = l0 - torch.logsumexp(l0.double(), 0).float() + 4e-9
    flat = br.ExactPosterior(gpt2_post.prompt, gpt2_post.completion_ids, gpt2_post.mask, l0,
                             torch.zeros_like(gpt2_post.rewards), 1.0, gpt2_post.lm)
    assert flat.prior_log_probs.dtype == torch.float64
    assert flat.kl_to_prior == 0.0 or 0.0 < flat.kl_to_prior < 1e-12
    assert abs(flat.log_z) < 1e-12
