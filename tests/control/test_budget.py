"""beta_for_kl / beta_for_reward against a plain bisection on the enumerated table."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.diagnostics.frontier import retilt
from bayes_rlhf.errors import ConfigError, PromptError
from tests.conftest import first_word_reward


def bisect(posts, statistic, value, lo=1e-3, hi=1e3, steps=200):
    """beta with mean_posts statistic(retilt(post, beta)) = value; the statistic falls as beta grows."""
    f = lambda b: sum(statistic(retilt(p, b)) for p in posts) / len(posts) - value  # noqa: E731
    for _ in range(steps):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
    return math.sqrt(lo * hi)


@pytest.fixture(scope="module")
def posts(gpt2_target):
    return [br.exact_posterior(gpt2_target, p) for p in ("w1 w2", "w3")]


@pytest.mark.parametrize("kl", [0.05, 0.5, 1.5])
def test_beta_for_kl_matches_bisection(gpt2_target, posts, kl):
    beta = br.beta_for_kl(gpt2_target, "w1 w2", kl)
    ref = bisect(posts[:1], lambda p: p.kl_to_prior, kl)
    assert float(beta) == pytest.approx(ref, rel=1e-8)
    assert retilt(posts[0], beta).kl_to_prior == pytest.approx(kl, abs=1e-8)
    assert beta.method == "exact" and beta.standard_error == 0.0 and beta.kl == pytest.approx(kl, abs=1e-10)


def test_several_prompts_average_the_kl(gpt2_target, posts):
    beta = br.beta_for_kl(gpt2_target, ["w1 w2", "w3"], 0.4)
    ref = bisect(posts, lambda p: p.kl_to_prior, 0.4)
    assert float(beta) == pytest.approx(ref, rel=1e-8) and beta.num_prompts == 2
    kls = [retilt(p, beta).kl_to_prior for p in posts]
    assert sum(kls) / 2 == pytest.approx(0.4, abs=1e-8) and abs(kls[0] - kls[1]) > 1e-3


def test_beta_for_reward_matches_bisection(gpt2_target, posts):
    lo, hi = posts[0].prior_mean_reward, float(posts[0].rewards.max())
    for value in (lo + 0.1 * (hi - lo), lo + 0.7 * (hi - lo)):
        beta = br.beta_for_reward(gpt2_target, "w1 w2", value)
        assert float(beta) == pytest.approx(bisect(posts[:1], lambda p: p.mean_reward, value), rel=1e-8)
        assert retilt(posts[0], beta).mean_reward == pytest.approx(value, abs=1e-8)
        assert beta.budget == "mean_reward" and beta.mean_reward == pytest.approx(value, abs=1e-10)


def test_budgets_beyond_reach_name_the_range(gpt2_target, posts):
    post = posts[0]
    top = post.rewards == post.rewards.max()
    kl_max = -float(torch.logsumexp(post.prior_log_probs[top], 0))  # KL of the max-reward posterior
    for kl in (-0.1, 0.0, kl_max, kl_max + 1):
        with pytest.raises(br.UnreachableError, match=r"reaches KL\(pi\* \|\| pi0\) in \(0, ") as info:
            br.beta_for_kl(gpt2_target, "w1 w2", kl)
        low, high = info.value.reachable
        assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(kl_max, rel=1e-12)
    # just inside the top of the range is reachable, with a small beta
    beta = br.beta_for_kl(gpt2_target, "w1 w2", kl_max - 1e-3)
    assert float(beta) < 0.2
    with pytest.raises(br.UnreachableError, match=r"E_pi\*\[r\]"):
        br.beta_for_reward(gpt2_target, "w1 w2", float(post.rewards.max()) + 0.5)
    constant = br.Target(gpt2_target.prior, br.TokenReward(lambda i, m: torch.zeros(i.shape[0]), name="zero"), 1.0, 3)
    with pytest.raises(br.UnreachableError, match="constant on the support"):
        br.beta_for_kl(constant, "w1 w2", 0.1)


def test_a_constraint_sets_the_least_kl(gpt2_lm):
    """With a hard constraint, beta -> inf gives pi0 restricted to it: KL >= -log pi0(C)."""
    ok = br.Constraint(lambda ids, mask: ~((ids == 4) & mask).any(-1), on="tokens", name="no_w1")
    reward = br.WeightedSum([(1.0, first_word_reward()), (1.0, ok)])
    target = br.Target(gpt2_lm, reward, 1.0, 3)
    post = br.exact_posterior(target, "w1 w2")
    kl_min = -float(torch.logsumexp(post.prior_log_probs[torch.isfinite(post.rewards)], 0))
    assert kl_min > 0.05
    with pytest.raises(br.UnreachableError) as info:
        br.beta_for_kl(target, "w1 w2", kl_min / 2)
    assert info.value.reachable[0] == pytest.approx(kl_min, rel=1e-12)
    beta = br.beta_for_kl(target, "w1 w2", kl_min + 0.2)
    assert retilt(post, beta).kl_to_prior == pytest.approx(kl_min + 0.2, abs=1e-8)


@pytest.mark.parametrize("budget", ["kl", "mean_reward"])
def test_snis_estimate_within_3_se_of_exact(gpt2_target, budget):
    """From 4096 prior draws per prompt: the estimate is within 3 SE (delta method) of the exact beta.
    The tilt is mild (beta near 1), so the weights' ESS is a large fraction of the draws."""
    fn, value = (br.beta_for_kl, 0.3) if budget == "kl" else (br.beta_for_reward, 0.2)
    exact = fn(gpt2_target, ["w1 w2", "w3"], value)
    est = fn(gpt2_target, ["w1 w2", "w3"], value, method="snis", num_samples=4096,
             generator=torch.Generator().manual_seed(0))
    assert est.method == "snis" and 0 < est.standard_error < 0.2 * float(exact)
    assert abs(float(est) - float(exact)) < 3 * est.standard_error, (float(est), float(exact), est.standard_error)


def test_snis_standard_error_is_calibrated(gpt2_target):
    """Over 20 seeds the spread of the beta estimates matches the mean reported SE: a sample sd of 20
    has relative SE ~ 1 / sqrt(38) ~ 0.16, so the ratio is checked in [0.6, 1.6]."""
    betas, ses = [], []
    for seed in range(20):
        b = br.beta_for_kl(gpt2_target, "w1 w2", 0.3, method="snis", num_samples=1024,
                           generator=torch.Generator().manual_seed(seed))
        betas.append(float(b))
        ses.append(b.standard_error)
    sd = float(torch.tensor(betas).std())
    assert 0.6 < sd / (sum(ses) / len(ses)) < 1.6, (sd, sum(ses) / len(ses))


def test_the_choice_is_a_float(gpt2_target):
    beta = br.beta_for_kl(gpt2_target, "w1 w2", 0.5)
    t = br.Target(gpt2_target.prior, gpt2_target.reward, beta, gpt2_target.max_new_tokens)
    assert isinstance(t.beta, float) and t.beta == float(beta)
    again = pickle.loads(pickle.dumps(beta))
    assert again == beta and again.kl == beta.kl and again.method == "exact"
    assert "kl=0.5" in repr(beta) and beta.summary()["beta"] == float(beta)


def test_bad_input(gpt2_target):
    for kwargs, error, message in [
        (dict(kl=math.nan), ConfigError, "kl must be a finite number"),
        (dict(kl=0.3, method="magic"), ConfigError, "method must be one of"),
        (dict(kl=0.3, method="snis", generator=3), ConfigError, "torch.Generator"),
        (dict(kl=0.3, prompts=[]), PromptError, "prompt"),
    ]:
        prompts = kwargs.pop("prompts", "w1 w2")
        with pytest.raises(error, match=message):
            br.beta_for_kl(gpt2_target, prompts, **kwargs)
    with pytest.raises(ConfigError, match="expected a bayes_rlhf.Target"):
        br.beta_for_kl("target", "w1 w2", 0.5)


def test_held_tables_are_used_not_enumerated_again(gpt2_target, posts, monkeypatch):
    want_kl = br.beta_for_kl(gpt2_target, ["w1 w2", "w3"], 0.4)
    want_r = br.beta_for_reward(gpt2_target, "w1 w2", posts[0].prior_mean_reward + 0.2)

    def refuse(*args, **kwargs):
        raise AssertionError("enumerated a prompt whose table was given")

    monkeypatch.setattr("bayes_rlhf.exact.from_target.exact_posterior", refuse)
    other_beta = [retilt(p, 3.0) for p in posts]  # only log pi0 and r are read: any beta gives the same answer
    for held in (posts, other_beta, {p.prompt: p for p in posts}):
        got = br.beta_for_kl(gpt2_target, ["w1 w2", "w3"], 0.4, posteriors=held)
        assert float(got) == float(want_kl) and got.kl == want_kl.kl and got.method == "exact"
    got = br.beta_for_reward(gpt2_target, "w1 w2", posts[0].prior_mean_reward + 0.2, posteriors=posts[0])
    assert float(got) == float(want_r)
    with pytest.raises(AssertionError, match="enumerated"):  # a prompt without a table is still enumerated
        br.beta_for_kl(gpt2_target, ["w1 w2", "w3"], 0.4, posteriors=posts[0])


def test_held_tables_of_another_target_are_refused(gpt2_target, posts, gpt2_lm):
    short = br.exact_posterior(br.Target(gpt2_lm, first_word_reward(), 1.0, 2), "w1 w2")
    for held, message in [(short, "not a table of this target"), (["table"], "ExactPosterior tables"),
                          (posts, "method='snis'")]:
        with pytest.raises(ConfigError, match=message):
            br.beta_for_kl(gpt2_target, "w1 w2", 0.4, posteriors=held,
                           method="snis" if message == "method='snis'" else "auto")


def test_tables_of_another_prior_or_reward_are_refused(gpt2_target):
    # beta_for_kl on tables of another model with the same tokenizer once returned its beta (0.67 for
    # a budget whose beta is 0.60), and tables of another reward a false UnreachableError
    from bayes_rlhf.models.toy import tiny_lm

    other_lm = tiny_lm("gpt2", vocab_size=8, seed=5)
    other_prior = br.exact_posterior(br.Target(other_lm, gpt2_target.reward, 1.0, gpt2_target.max_new_tokens), "w3")
    with pytest.raises(ConfigError, match="another prior"):
        br.beta_for_kl(gpt2_target, "w3", 0.5, posteriors=other_prior)
    other_reward = br.exact_posterior(br.Target(gpt2_target.prior, first_word_reward(4), 1.0,
                                                gpt2_target.max_new_tokens), "w3")
    with pytest.raises(ConfigError, match="another reward"):
        br.beta_for_kl(gpt2_target, "w3", 0.5, posteriors=other_reward)
