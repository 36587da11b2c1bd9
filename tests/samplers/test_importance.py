"""Importance sampling and SIR against the exact posterior of a tiny GPT-2."""

from __future__ import annotations

import math

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.errors import ConfigError, NoMassError, PromptError, TokenizerMismatchError
from bayes_rlhf.models.toy import tiny_lm
from bayes_rlhf.samplers import importance_sample, sampling_importance_resampling

PROMPT = "w1 w2"


def z_ratio_stats(log_z: torch.Tensor, true_log_z: float) -> tuple[float, float]:
    """Mean of exp(log_z - log Z) over replicates and its standard error."""
    z = torch.exp(log_z - true_log_z)
    return float(z.mean()), float(z.std() / math.sqrt(z.numel()))


@pytest.mark.parametrize("use_policy", [False, True])
def test_z_estimate_unbiased(mild_target, mild_post, other_policy, use_policy):
    # R = 300 independent runs of N = 16 proposals, batched as 300 copies of the prompt.
    # E[Z_hat / Z] = 1; the mean of R ratios is within 3 standard errors (estimated from the runs).
    R, N = 300, 16
    ws = importance_sample(mild_target, [PROMPT] * R, N, proposal=other_policy if use_policy else None,
                           generator=torch.Generator().manual_seed(11))
    mean, se = z_ratio_stats(ws.log_z, mild_post.log_z)
    assert se < 0.1
    assert abs(mean - 1.0) < 3 * se


def test_snis_converges_to_exact_mean_reward(mild_target, mild_post):
    # 40 replicates at N = 16 and at N = 1024: the error of the self-normalised E[r] shrinks
    # like 1 / sqrt(N) (expected ratio 8; we ask for 3), and at N = 1024 the replicate mean is
    # within 4 replicate-SE of the exact value (the O(1/N) SNIS bias is far below that SE).
    R = 40
    g = torch.Generator().manual_seed(5)
    small = importance_sample(mild_target, [PROMPT] * R, 16, generator=g).mean_reward
    large = importance_sample(mild_target, [PROMPT] * R, 1024, generator=g).mean_reward
    exact = mild_post.mean_reward
    err_small, err_large = (small - exact).abs().mean(), (large - exact).abs().mean()
    assert err_large < err_small / 3
    assert abs(float(large.mean()) - exact) < 4 * float(large.std() / math.sqrt(R))


def test_sir_draws_match_posterior(mild_target, mild_post):
    # 2000 SIR draws from 20000 proposals; the SE of their mean reward is sd_pi*(r) / sqrt(2000)
    # inflated for SIR's duplicates by at most sqrt(1 + 2000 / ESS); we allow 4 of those.
    g = torch.Generator().manual_seed(3)
    draws = sampling_importance_resampling(mild_target, PROMPT, 20000, 2000, generator=g, scheme="systematic")
    r = mild_target.rewards(PROMPT, draws.ids, draws.mask)
    sd = math.sqrt(mild_post.expectation(mild_post.rewards ** 2) - mild_post.mean_reward ** 2)
    assert abs(float(r.mean()) - mild_post.mean_reward) < 4 * sd * math.sqrt((1 + 2000 / 5000) / 2000)


def test_weights_are_exact_log_density_ratios(mild_target, other_policy):
    ws = importance_sample(mild_target, ["w1 w2", "w3"], 7, proposal=other_policy,
                           generator=torch.Generator().manual_seed(0), batch_size=4)
    assert torch.equal(ws.prompt_index, torch.tensor([0] * 7 + [1] * 7))
    prompts = [ws.prompts[i] for i in ws.prompt_index.tolist()]
    lq = other_policy.score(prompts, ws.ids, ws.mask).sum(-1)
    expected = mild_target.log_density(prompts, ws.ids, ws.mask) - lq
    assert torch.allclose(ws.log_weights, expected, atol=1e-9)
    again = importance_sample(mild_target, ["w1 w2", "w3"], 7, proposal=other_policy,
                              generator=torch.Generator().manual_seed(0), batch_size=4)
    assert torch.equal(again.ids, ws.ids) and torch.equal(again.log_weights, ws.log_weights)


def test_bad_input(mild_target):
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ConfigError):
        importance_sample(mild_target, PROMPT, 0, generator=g)
    with pytest.raises(PromptError):
        importance_sample(mild_target, [], 4, generator=g)
    with pytest.raises(TokenizerMismatchError):
        importance_sample(mild_target, PROMPT, 4, proposal=tiny_lm("gpt2", vocab_size=10, seed=0))
    never = br.TokenReward(lambda ids, mask: torch.full((ids.shape[0],), -math.inf), name="never")
    target = br.Target(prior=mild_target.prior, reward=never, beta=1.0, max_new_tokens=3)
    with pytest.raises(NoMassError, match="no mass where the proposal looked"):
        importance_sample(target, PROMPT, 8, generator=g)


def test_a_proposal_truncated_below_the_prior_is_refused(mild_target, gpt2_lm, other_policy):
    # q = 0 off its own top-3 where pi0 > 0: the weights never see that mass, E[Z_hat] < Z (the audit
    # measured E[Z_hat / Z] = 0.22 for IS and 0.25 for SMC); refused before any sampling
    for sampler in (lambda **kw: importance_sample(mild_target, PROMPT, 4, **kw),
                    lambda **kw: br.smc(mild_target, PROMPT, 4, **kw)):
        with pytest.raises(ConfigError, match="own top_k=3"):
            sampler(proposal=other_policy.with_top_k(3))
        with pytest.raises(ConfigError, match="support of another model"):  # untruncated target
            sampler(proposal=other_policy.with_support(gpt2_lm.with_top_k(3)))
    with pytest.raises(ConfigError, match="own top_k=3"):
        forbid_pad = torch.arange(8) == 7
        br.smc(mild_target, PROMPT, 4, proposal=br.LocallyConstrained(forbid_pad, base=other_policy.with_top_k(3),
                                                                      check=False))
    # what covers the prior is accepted: an untruncated q, the prior's own truncation, a q restricted
    # to the support of a truncated target's prior, and a top-k equal to the vocabulary
    truncated = br.Target(gpt2_lm.with_top_k(3), mild_target.reward, mild_target.beta, 3)
    g = torch.Generator().manual_seed(0)
    for target, q in ((mild_target, other_policy), (mild_target, other_policy.with_top_k(8)),
                      (truncated, other_policy.with_support(truncated.prior)), (truncated, gpt2_lm.with_top_k(3))):
        assert torch.isfinite(importance_sample(target, PROMPT, 8, proposal=q, generator=g).log_z).all()
        assert torch.isfinite(br.smc(target, PROMPT, 8, proposal=q, generator=g).log_z).all()
