"""diagnostics.exact: compare (exact KL both ways, TV, the RL objective), policy_log_probs, and the
per-token KLs token_kl and position_kl against the chain rule."""

import math

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.diagnostics.exact import policy_log_probs, position_kl, token_kl
from bayes_rlhf.diagnostics.weights import EmptySamplesError
from bayes_rlhf.errors import ConfigError, TokenizerMismatchError
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


# Tolerance of the sampled check below: a mean of iid terms, within Z = 4 standard errors of its
# expectation except with probability 6e-5 (CLT); the seed is fixed.
Z = 4.0


@pytest.fixture(scope="module")
def policy():
    return tiny_lm("gpt2", vocab_size=8, seed=3)


def test_token_kl_chain_rule_exact(short_post, policy):
    # E_pi*[sum_t KL_t(pi* || q)] = KL(pi* || q) and E_q[sum_t KL_t(q || pi*)] = KL(q || pi*)
    post = short_post
    lq = policy_log_probs(policy, post)
    c = br.compare(lq, post)
    fwd = token_kl(policy, post, post.completion_ids, post.mask, "forward")
    rev = token_kl(policy, post, post.completion_ids, post.mask, "reverse")
    assert float((post.probs * fwd.sum(-1)).sum()) == pytest.approx(c.kl_posterior_q, rel=1e-9)
    assert float((lq.exp() * rev.sum(-1)).sum()) == pytest.approx(c.kl_q_posterior, rel=1e-9)
    assert bool((fwd[~post.mask] == 0).all()) and bool((fwd >= -1e-12).all())


def test_position_kl_from_tables(short_post, policy):
    post = short_post
    lq = policy_log_probs(policy, post)
    c = br.compare(lq, post)
    fwd = token_kl(policy, post, post.completion_ids, post.mask, "forward")
    by_pos = position_kl(lq, post)
    assert torch.allclose(by_pos, (post.probs[:, None] * fwd).sum(0), rtol=1e-9, atol=1e-12)
    assert float(position_kl(lq, post, "reverse").sum()) == pytest.approx(c.kl_q_posterior, rel=1e-9)
    assert float(position_kl(post.log_probs, post).sum()) == pytest.approx(0.0, abs=1e-12)
    point_mass = torch.full_like(lq, -math.inf)
    point_mass[0] = 0.0  # q misses everything pi* puts elsewhere
    assert math.isinf(float(position_kl(point_mass, post).sum()))
    with pytest.raises(ConfigError, match="entries"):
        position_kl(lq[:5], post)


def test_token_kl_along_posterior_samples(short_post, policy):
    post = short_post
    exact = br.compare(policy_log_probs(policy, post), post).kl_posterior_q
    n = 300
    s = post.sample(n, generator=torch.Generator().manual_seed(4))
    per_seq = token_kl(policy, post, s.ids, s.mask).sum(-1)
    se = float(per_seq.std()) / math.sqrt(n)
    assert abs(float(per_seq.mean()) - exact) < Z * se


def test_token_kl_bad_input(short_post, policy):
    other = tiny_lm("gpt2", vocab_size=10, seed=0)
    with pytest.raises(TokenizerMismatchError):
        token_kl(other, short_post, short_post.completion_ids[:2], short_post.mask[:2])
    with pytest.raises(EmptySamplesError):
        token_kl(policy, short_post, short_post.completion_ids[:0], short_post.mask[:0])
    with pytest.raises(ConfigError, match="direction"):
        token_kl(policy, short_post, short_post.completion_ids[:1], short_post.mask[:1], "both")


def test_a_hard_constraint_leaves_the_forward_kl_finite(gpt2_lm):
    # pi* = 0 where the constraint fails (log pi* = -inf): those rows add 0 to KL(pi* || q), not
    # 0 * (-inf) = NaN (once returned for every q, pi* itself included)
    ban = br.TokenReward(lambda ids, mask: torch.where(((ids == 4) & mask).any(-1), -math.inf,
                                                       ((ids == 3) & mask).sum(-1).double()), name="no_w1")
    post = br.exact_posterior(br.Target(gpt2_lm, ban, 1.0, 3), "w1")
    assert bool((post.log_probs == -math.inf).any())
    prior = br.compare(gpt2_lm, post)
    assert math.isclose(prior.kl_posterior_q, post.kl_to_prior, rel_tol=1e-12)
    assert prior.kl_q_posterior == math.inf  # the prior puts mass where pi* has none
    itself = br.compare(post.log_probs, post)
    assert itself.kl_posterior_q == 0.0 and itself.kl_q_posterior == 0.0
    other = tiny_lm("gpt2", vocab_size=8, seed=11)
    keep = post.probs > 0
    lq = policy_log_probs(other, post)
    want = float((post.probs[keep] * (post.log_probs[keep] - lq[keep])).sum())
    assert math.isclose(br.compare(other, post).kl_posterior_q, want, rel_tol=1e-12) and want > 0


def test_a_prefix_pi_star_never_visits_has_no_next_token_law(gpt2_lm):
    # under a hard constraint a prefix can have prior mass and no posterior mass: its pi*(. | prefix)
    # was all NaN, and token_kl read 0 there
    ban = br.TokenReward(lambda ids, mask: torch.where(((ids == 4) & mask).any(-1), -math.inf, 0.0).double())
    post = br.exact_posterior(br.Target(gpt2_lm, ban, 1.0, 3), "w1")
    assert torch.isfinite(post.token_prior([4])).all()
    with pytest.raises(br.NoMassError, match="probability 0"):
        post.token_posterior([4])
    with pytest.raises(br.NoMassError):
        token_kl(gpt2_lm, post, torch.tensor([[4, 3, 3]]), torch.ones(1, 3, dtype=torch.bool))


def test_position_kl_refuses_a_q_with_mass_off_the_table(gpt2_lm, reward):
    # q untruncated on a top-3 table: its conditionals renormalised over the table are not q's own
    post = br.exact_posterior(br.Target(gpt2_lm.with_top_k(3), reward, 0.7, 3), "w1")
    with pytest.raises(ConfigError, match="mass .* on the table, not 1"):
        position_kl(policy_log_probs(gpt2_lm, post), post)
    restricted = policy_log_probs(tiny_lm("gpt2", vocab_size=8, seed=11).with_support(post.lm), post)
    want = br.compare(restricted, post).kl_posterior_q
    assert want > 0.01 and math.isclose(float(position_kl(restricted, post).sum()), want, rel_tol=1e-9)
