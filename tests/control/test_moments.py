"""moment_target: the I-projection pi0 exp(lambda . phi) / Z, checked against its own enumeration."""

from __future__ import annotations

import math

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.control.tables import resolve_method
from bayes_rlhf.errors import ConfigError, PromptError, RewardError
from bayes_rlhf.models.toy import tiny_lm

W0 = 3  # the first word's id in the toy vocabulary (after pad, BOS, EOS)


def count(word: int = W0) -> br.TokenReward:
    return br.TokenReward(lambda ids, mask: ((ids == word) & mask).sum(-1).double(), name=f"count{word}")


def length() -> br.TokenReward:
    return br.TokenReward(lambda ids, mask: mask.sum(-1).double(), name="length")


def features_of(post, features) -> torch.Tensor:
    """phi on the posterior's table [K, d], computed directly from the token functions."""
    return torch.stack([f.fn(post.completion_ids, post.mask).double() for f in features], dim=1)


def check_posterior(target, prompts, moments, tol):
    """E[phi] averaged over prompts equals m, and log pi* - log pi0 = lambda . phi - log Z on each table."""
    lam = torch.tensor(target.reward.coefficients, dtype=torch.float64)
    means = []
    for prompt in prompts:
        post = br.exact_posterior(target, prompt)
        phi = features_of(post, target.reward.features)
        keep = torch.isfinite(post.log_probs)
        means.append(post.probs @ phi)
        ratio = post.log_probs[keep] - post.prior_log_probs[keep]
        assert torch.allclose(ratio, phi[keep] @ lam - post.log_z, atol=1e-9, rtol=0)  # affine in phi
    achieved = torch.stack(means).mean(0)
    assert torch.allclose(achieved, torch.tensor(moments, dtype=torch.float64), atol=tol, rtol=0), achieved
    return achieved


def test_one_feature_exact(gpt2_lm):
    target = br.moment_target(gpt2_lm, "w1 w2", [count()], [0.9], max_new_tokens=4, method="exact")
    assert target.beta == 1.0 and isinstance(target.reward, br.MomentReward)
    assert len(target.reward.coefficients) == 1 and target.reward.features[0].name == "count3"
    check_posterior(target, ["w1 w2"], [0.9], tol=1e-8)
    fit = target.reward.fit
    assert fit.method == "exact" and fit.standard_error == (0.0,)
    assert abs(fit.achieved[0] - 0.9) < 1e-9 and fit.moment_error[0] == pytest.approx(0.0, abs=1e-9)
    # KL(pi* || pi0) = lambda m - log Z, also computed from the enumerated posterior
    post = br.exact_posterior(target, "w1 w2")
    assert fit.kl_to_prior == pytest.approx(post.kl_to_prior, abs=1e-10)


def test_two_features_two_prompts_share_one_lambda(gpt2_lm):
    prompts, m = ["w1 w2", "w3"], [0.6, 2.5]
    target = br.moment_target(gpt2_lm, prompts, [count(), length()], m, max_new_tokens=4, method="exact")
    check_posterior(target, prompts, m, tol=1e-8)
    # each prompt alone misses the moments: only their average is constrained
    per_prompt = [br.exact_posterior(target, p).probs @ features_of(br.exact_posterior(target, p),
                                                                    target.reward.features) for p in prompts]
    assert float((per_prompt[0] - per_prompt[1]).abs().max()) > 1e-3


@pytest.mark.parametrize("m", [[2.9, 2.95], [2.999, 2.9995], [0.01, 1.02]])
def test_moments_near_the_edge_converge(gpt2_lm, m):
    """Far from the prior: an unguarded first Newton step from lambda = 0 jumps to where the tilt sits
    on one atom (Hessian ~ 1e-19) and stalls; the step cap keeps the solve going."""
    prompts = ["w1 w2", "w3"]
    target = br.moment_target(gpt2_lm, prompts, [count(), length()], m, max_new_tokens=3, method="exact")
    assert target.reward.fit.iterations < 30
    check_posterior(target, prompts, m, tol=1e-8)


def test_collinear_features_with_consistent_moments(gpt2_lm):
    double = br.TokenReward(lambda ids, mask: 2.0 * ((ids == W0) & mask).sum(-1).double(), name="double")
    target = br.moment_target(gpt2_lm, "w1 w2", [count(), double], [0.7, 1.4], max_new_tokens=3, method="exact")
    check_posterior(target, ["w1 w2"], [0.7, 1.4], tol=1e-8)


def test_constraint_combines_with_the_moments(gpt2_lm):
    no_w1 = br.Constraint(lambda ids, mask: ~((ids == W0 + 1) & mask).any(-1), on="tokens", name="no_w1")
    target = br.moment_target(gpt2_lm, "w1 w2", [count()], [0.5], max_new_tokens=3, constraint=no_w1,
                              method="exact")
    post = br.exact_posterior(target, "w1 w2")
    bad = ((post.completion_ids == W0 + 1) & post.mask).any(-1)
    assert bool(bad.any()) and float(post.probs[bad].sum()) == 0.0
    check_posterior(target, ["w1 w2"], [0.5], tol=1e-8)
    # the result is the I-projection of the prior restricted to the constraint: KL includes -log pi0(C)
    assert target.reward.fit.kl_to_prior == pytest.approx(post.kl_to_prior, abs=1e-10)


def test_unreachable_moments_name_the_range(gpt2_lm):
    for m in (-0.1, 0.0, 3.0, 3.5):  # T = 3: the count ranges over [0, 3]; the ends need lambda = +-inf
        with pytest.raises(br.UnreachableError, match=r"count3 in \(0, 3\)") as info:
            br.moment_target(gpt2_lm, "w1 w2", [count()], [m], max_new_tokens=3, method="exact")
        assert info.value.reachable == [(0.0, 3.0)]
    # each moment inside its range, but no distribution has both: phi2 = phi1 with m2 != m1
    with pytest.raises(br.UnreachableError, match="not jointly"):
        br.moment_target(gpt2_lm, "w1 w2", [count(), count()], [0.5, 0.7], max_new_tokens=3, method="exact")
    # length and count: count <= length on every completion, so (count 2.5, length 2.4) is outside the hull
    with pytest.raises(br.UnreachableError, match="not jointly"):
        br.moment_target(gpt2_lm, "w1 w2", [count(), length()], [2.5, 2.4], max_new_tokens=3, method="exact")


def test_bad_input_is_refused_before_any_model_call(gpt2_lm):
    calls = []

    def spy(prompts, completions):
        calls.append(len(completions))
        return [0.0] * len(completions)

    cases = [
        (dict(features=[spy], moments=[0.1, 0.2]), ConfigError, "1 features but 2 moments"),
        (dict(features=[spy], moments=[math.nan]), ConfigError, "moment for 'spy'"),
        (dict(features=[], moments=[]), ConfigError, "at least one feature"),
        (dict(features=["length"], moments=[1.0]), RewardError, "a feature must be a reward"),
        (dict(features=[spy], moments=[0.1], method="mcmc"), ConfigError, "method must be one of"),
        (dict(features=[spy], moments=[0.1], method="smc", proposal=gpt2_lm), ConfigError, "snis. only"),
        (dict(features=[spy], moments=[0.1], prompts="w1 nonsense"), PromptError, "nonsense"),
        (dict(features=[spy], moments=[0.1], max_new_tokens=0), ConfigError, "max_new_tokens"),
        (dict(features=[spy], moments=[0.1], constraint=3), RewardError, "constraint must be a reward"),
        (dict(features=[spy], moments=[0.1], method="snis", generator=0), ConfigError, "torch.Generator"),
        (dict(features=[spy], moments=[0.1], method="exact", proposal=gpt2_lm), ConfigError, "method='snis' only"),
    ]
    for kwargs, error, message in cases:
        args = {"prompts": "w1 w2", "max_new_tokens": 2, **kwargs}
        with pytest.raises(error, match=message):
            br.moment_target(gpt2_lm, args.pop("prompts"), args.pop("features"), args.pop("moments"),
                             args.pop("max_new_tokens"), **args)
    assert calls == []


def test_a_feature_must_be_finite(gpt2_lm):
    inf_feature = br.TokenReward(lambda ids, mask: torch.where(mask.sum(-1) == 1, -math.inf, 0.0).double(),
                                 name="bad")
    with pytest.raises(RewardError, match="features must be finite"):
        br.moment_target(gpt2_lm, "w1 w2", [inf_feature], [0.1], max_new_tokens=2, method="exact")


def test_auto_uses_the_exact_engines_size_guard(gpt2_lm):
    assert resolve_method("auto", gpt2_lm, 3) == "exact"
    assert resolve_method("auto", gpt2_lm, 3, max_completions=10) == "snis"
    target = br.moment_target(gpt2_lm, "w1 w2", [count()], [0.5], max_new_tokens=3, max_completions=10,
                              generator=torch.Generator().manual_seed(0), num_samples=512)
    assert target.reward.fit.method == "snis"


@pytest.mark.parametrize("proposal", ["prior", "other"])
def test_snis_matches_the_exact_moments_within_3_se(gpt2_lm, proposal):
    """lambda fitted on N = 4096 importance samples; its exact moments (by enumeration) are within
    3 reported SEs of m, and the held-out estimate within 3 SEs of the exact moments. The reported SE
    is the delta-method SE of a self-normalised mean of N fresh draws, which is also the first-order
    SE of the fitted lambda's moment error. A mild tilt (ESS ~ 3400 of 4096) keeps the delta method
    calibrated: over 16 seeds the z-scores had sd 0.6-1.05 and |z| <= 2.2 (with ESS ~ 200 they had sd
    ~ 2: the SE underestimates heavy-tailed weights). With a fixed seed the check is deterministic."""
    q = None if proposal == "prior" else tiny_lm("gpt2", vocab_size=8, seed=5)
    m = [0.25, 2.7]
    target = br.moment_target(gpt2_lm, ["w1 w2", "w3"], [count(), length()], m, max_new_tokens=3,
                              method="snis", num_samples=4096, proposal=q, generator=torch.Generator().manual_seed(1))
    fit = target.reward.fit
    se = torch.tensor(fit.standard_error)
    assert fit.method == "snis" and bool((se > 0).all()) and bool((se < 0.05).all())
    assert len(fit.ess) == 2 and all(200 < e <= 4096 for e in fit.ess)  # other proposal: ~460
    exact = torch.stack([br.exact_posterior(target, p).probs @ features_of(br.exact_posterior(target, p),
                                                                           target.reward.features)
                         for p in ["w1 w2", "w3"]]).mean(0)
    assert bool(((exact - torch.tensor(m)).abs() < 3 * se).all()), (exact, se)
    assert bool(((torch.tensor(fit.achieved) - exact).abs() < 3 * se).all()), (fit.achieved, exact, se)


def test_smc_matches_the_exact_moments_within_3_se(gpt2_lm):
    """lambda fitted on N = 1024 SMC particles per prompt of the current tilt (rounds until the tilt
    stops moving); the returned target's exact moments (by enumeration) are within 3 reported SEs of m.
    The SE treats particles as independent (too small after heavy resampling); on this mild tilt, over
    4 seeds the z-scores were |z| <= 1.5. With a fixed seed the check is deterministic."""
    m = [0.25, 2.7]
    target = br.moment_target(gpt2_lm, ["w1 w2", "w3"], [count(), length()], m, max_new_tokens=3,
                              method="smc", num_samples=1024, generator=torch.Generator().manual_seed(0))
    fit = target.reward.fit
    se = torch.tensor(fit.standard_error)
    assert fit.method == "smc" and bool((se > 0).all()) and bool((se < 0.05).all())
    assert len(fit.ess) == 2 and all(512 < e <= 1024 for e in fit.ess)  # drawn from (nearly) the tilt itself
    exact = torch.stack([br.exact_posterior(target, p).probs @ features_of(br.exact_posterior(target, p),
                                                                           target.reward.features)
                         for p in ["w1 w2", "w3"]]).mean(0)
    assert bool(((exact - torch.tensor(m)).abs() < 3 * se).all()), (exact, se)
    with pytest.raises(ConfigError, match="rounds"):
        br.moment_target(gpt2_lm, "w3", [count()], [0.2], max_new_tokens=3, method="smc", rounds=0)


def test_the_moment_target_works_in_samplers(gpt2_lm):
    target = br.moment_target(gpt2_lm, "w1 w2", [count()], [0.8], max_new_tokens=3, method="exact")
    post = br.exact_posterior(target, "w1 w2")
    ws = br.importance_sample(target, "w1 w2", 2048, generator=torch.Generator().manual_seed(0))
    phi = count().fn(ws.ids, ws.mask).double()
    # SNIS mean of phi: SE from the self-normalised weights, 4 SE for a fixed-seed check
    w = ws.normalized_weights()
    est = float(w @ phi)
    se = float(((w * (phi - est)) ** 2).sum().sqrt())
    assert abs(est - 0.8) < 4 * se
    assert float(ws.log_z[0]) == pytest.approx(post.log_z, abs=4 * math.sqrt(1 / float(ws.ess[0])))
    r = br.evaluate_reward(target.reward, gpt2_lm, ["w1 w2"] * 4, ws.ids[:4], ws.mask[:4])
    assert torch.allclose(r, target.reward.coefficients[0] * phi[:4])
    summary = target.reward.summary()
    assert summary["features"] == ["count3"] and list(summary["moments"]) == [0.8]


def test_acceptance_on_an_unseen_model():
    """A model used nowhere else (tiny Llama, vocab 10, seed 123): E[phi] = m and log pi*/pi0 affine in
    phi to 1e-4, and beta_for_kl's posterior has KL(pi* || pi0) = 0.5 to 1e-4."""
    lm = tiny_lm("llama", vocab_size=10, seed=123)
    prompt, m = "w2 w5", [0.3, 2.0]
    target = br.moment_target(lm, prompt, [count(W0 + 4), length()], m, max_new_tokens=4)
    check_posterior(target, [prompt], m, tol=1e-4)
    reward_target = br.Target(lm, count(W0 + 4), beta=1.0, max_new_tokens=4)
    beta = br.beta_for_kl(reward_target, prompt, kl=0.5)
    post = br.exact_posterior(br.Target(lm, reward_target.reward, beta, 4), prompt)
    assert abs(post.kl_to_prior - 0.5) < 1e-4
