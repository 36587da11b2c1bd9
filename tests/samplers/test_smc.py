"""Token-level SMC against the exact posterior: zero variance, unbiasedness, KV-cache reindexing."""

from __future__ import annotations

import math

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.errors import ConfigError, NoMassError, TokenizerMismatchError
from bayes_rlhf.models.toy import tiny_lm
from bayes_rlhf.samplers import RESAMPLERS, SMC, PrefixPotential, SMCConfig, smc
from tests.conftest import first_word_reward

PROMPT = "w1 w2"
SCHEMES = sorted(RESAMPLERS)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_exact_twist_and_proposal_give_exact_log_z(gpt2_target, gpt2_post, scheme):
    # gpt2_target (beta 0.7) is the hard one: prior-proposal weights have relative variance ~600.
    post_b = br.exact_posterior(gpt2_target, "w3")
    for seed in range(3):
        ws = smc(gpt2_target, [PROMPT, "w3"], 16, proposal=[gpt2_post, post_b], twist=[gpt2_post, post_b],
                 resampling=scheme, generator=torch.Generator().manual_seed(seed))
        assert torch.allclose(ws.log_z, torch.tensor([gpt2_post.log_z, post_b.log_z], dtype=torch.float64),
                              atol=1e-9, rtol=0)
        for p in range(2):  # every particle carries weight Z: zero variance
            lw = ws.log_weights[ws.rows(p)]
            assert float(lw.max() - lw.min()) < 1e-9
        assert not bool(ws.history.resampled.any())


@pytest.mark.parametrize("beta", [0.7, 1.5])
def test_exact_twist_with_twisted_prior_proposal_is_exact(gpt2_lm, reward, beta):
    # q(v | x_<t) ∝ pi0(v | x_<t) exp(V_t / beta) is pi*(v | x_<t): zero variance from the prior.
    target = br.Target(prior=gpt2_lm, reward=reward, beta=beta, max_new_tokens=4)
    post = br.exact_posterior(target, PROMPT)
    ws = smc(target, [PROMPT] * 5, 8, proposal="twisted", twist=post, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ws.log_z, torch.full((5,), post.log_z, dtype=torch.float64), atol=1e-9, rtol=0)


def test_exact_twist_zero_variance_on_llama(llama_lm, reward):
    target = br.Target(prior=llama_lm, reward=reward, beta=0.5, max_new_tokens=3)
    post = br.exact_posterior(target, "w0")
    ws = smc(target, "w0", 8, proposal=post, twist=post, generator=torch.Generator().manual_seed(0))
    assert abs(float(ws.log_z) - post.log_z) < 1e-9


def _z_ratio_runs(target, post, resampling, R=200, N=8, seed=21):
    # A prefix potential that is not the exact twist: then which particles survive resampling
    # matters for the estimate (with the exact twist every prefix has the same expected
    # increment, so even a biased resampler would stay unbiased). ess_threshold=1 resamples
    # whenever the weights differ. R runs of N particles are batched as R copies of the prompt.
    ws = smc(target, [PROMPT] * R, N, twist=PrefixPotential(first_word_reward(), scale=0.7), ess_threshold=1.0,
             resampling=resampling, generator=torch.Generator().manual_seed(seed))
    assert int(ws.history.num_resampling_steps.sum()) > R  # resampling did happen
    z = torch.exp(ws.log_z - post.log_z)
    return float(z.mean()), float(z.std() / math.sqrt(R))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_z_unbiased_every_scheme(mild_target, mild_post, scheme):
    # The mean of exp(log_z - log Z) over 200 runs is 1 within 3 standard errors of the runs.
    mean, se = _z_ratio_runs(mild_target, mild_post, scheme)
    assert se < 0.05
    assert abs(mean - 1.0) < 3 * se


def test_unbiasedness_check_detects_a_biased_resampler(mild_target, mild_post):
    # The same check rejects a resampler that always keeps the heaviest particle.
    greedy = lambda lw, n, generator=None: torch.full((n,), int(lw.argmax()))  # noqa: E731
    mean, se = _z_ratio_runs(mild_target, mild_post, greedy)
    assert abs(mean - 1.0) > 3 * se


@pytest.mark.parametrize("kind", ["bootstrap", "prefix_potential", "policy_proposal", "twisted_prefix_potential",
                                  "twisted_no_twist"])
def test_z_unbiased_other_settings(mild_target, mild_post, other_policy, kind):
    # Same 3-SE criterion with R = 200 runs of N = 8: bootstrap (terminal reward only), a prefix
    # potential (the reward evaluated on prefixes) and a CausalLM proposal with the exact twist
    # (so the proposal's KV cache is reindexed too).
    R, N = 200, 8
    kw = {"bootstrap": {}, "prefix_potential": {"twist": PrefixPotential(first_word_reward())},
          "twisted_prefix_potential": {"twist": PrefixPotential(first_word_reward()), "proposal": "twisted"},
          "twisted_no_twist": {"proposal": "twisted"},
          "policy_proposal": {"proposal": other_policy, "twist": mild_post}}[kind]
    ws = smc(mild_target, [PROMPT] * R, N, ess_threshold=1.0, generator=torch.Generator().manual_seed(8), **kw)
    z = torch.exp(ws.log_z - mild_post.log_z)
    se = float(z.std() / math.sqrt(R))
    assert abs(float(z.mean()) - 1.0) < 3 * se


def test_self_normalised_reward_converges(mild_target, mild_post):
    # 30 runs each at N = 8 and N = 256 with the exact twist: the mean absolute error of the
    # weighted E[r] shrinks (expected ~ sqrt(32) ~ 5.7; we ask for 3) and at N = 256 the run
    # mean is within 4 run-SE of the exact E[r].
    R = 30
    g = torch.Generator().manual_seed(4)
    small = smc(mild_target, [PROMPT] * R, 8, twist=mild_post, generator=g).mean_reward
    large = smc(mild_target, [PROMPT] * R, 256, twist=mild_post, generator=g).mean_reward
    exact = mild_post.mean_reward
    assert (large - exact).abs().mean() < (small - exact).abs().mean() / 3
    assert abs(float(large.mean()) - exact) < 4 * float(large.std() / math.sqrt(R))


def test_kv_cache_reindexed_not_recomputed_matches_fresh_forward(mild_target, mild_post, other_policy):
    prior = mild_target.prior
    # a prefix potential makes the weights vary at every token, so resampling happens
    algo = SMC(mild_target, [PROMPT, "w3"], SMCConfig(6, ess_threshold=1.0), proposal=other_policy,
               twist=PrefixPotential(first_word_reward()))
    g = torch.Generator().manual_seed(2)
    state = algo.init()
    resampled = False
    for _ in range(3):
        state, info = algo.step(state, generator=g)
        resampled |= bool(info["resampled"].any())
    assert resampled
    live = torch.nonzero(state.alive).squeeze(-1)
    prompts = [algo.row_prompts[i] for i in live.tolist()]
    for lm, logp in ((prior, state.prior_logp), (other_policy, state.proposal_logp)):
        ids = state.ids[live, : state.t]
        full = lm.token_log_probs(prompts, torch.cat([ids, torch.zeros_like(ids[:, :1])], 1),
                                  torch.ones(ids.shape[0], state.t + 1, dtype=torch.bool))
        # score the next token 0 after each prefix from scratch, compare with the cached log-probs
        assert torch.allclose(full[:, -1], logp[live, 0].double(), atol=1e-10)


def test_history_and_info(mild_target):
    ws = smc(mild_target, [PROMPT, "w3"], 5, twist=PrefixPotential(first_word_reward()),
             generator=torch.Generator().manual_seed(0))
    h = ws.history
    S = h.ess.shape[0]
    assert 1 <= S <= mild_target.max_new_tokens and h.ess.shape == (S, 2) == h.resampled.shape == h.log_z.shape
    assert torch.allclose(h.log_z[-1], ws.log_z)
    assert int(h.num_alive[-1].sum()) == 0 and bool(ws.mask[:, 0].all())
    assert ws.info["tokens"] == int(ws.mask.sum()) and ws.info["tokens_per_second"] > 0
    assert torch.isfinite(ws.rewards).all() and len(ws.texts) == 10


def test_same_seed_same_result(mild_target, mild_post):
    a = smc(mild_target, PROMPT, 12, twist=mild_post, generator=torch.Generator().manual_seed(9))
    b = smc(mild_target, PROMPT, 12, twist=mild_post, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a.ids, b.ids) and torch.equal(a.log_z, b.log_z)


def test_bad_input(mild_target, mild_post, gpt2_post):
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ConfigError, match="num_particles"):
        smc(mild_target, PROMPT, 0, generator=g)
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="ess_threshold"):
            smc(mild_target, PROMPT, 4, ess_threshold=bad, generator=g)
    with pytest.raises(ConfigError, match="not known"):
        smc(mild_target, PROMPT, 4, proposal="fancy", generator=g)
    with pytest.raises(ConfigError, match="unknown resampling"):
        smc(mild_target, PROMPT, 4, resampling="fancy", generator=g)
    with pytest.raises(TokenizerMismatchError):
        smc(mild_target, PROMPT, 4, proposal=tiny_lm("gpt2", vocab_size=10, seed=0), generator=g)
    with pytest.raises(ConfigError, match="no ExactPosterior for prompt"):
        smc(mild_target, "w3", 4, twist=mild_post, generator=g)
    with pytest.raises(ConfigError, match="beta"):
        smc(mild_target, PROMPT, 4, twist=gpt2_post, generator=g)  # gpt2_post has beta 0.7
    never = br.TokenReward(lambda ids, mask: torch.full((ids.shape[0],), -math.inf), name="never")
    target = br.Target(prior=mild_target.prior, reward=never, beta=1.0, max_new_tokens=3)
    with pytest.raises(NoMassError, match="no mass where the proposal looked"):
        smc(target, PROMPT, 8, generator=g)


@pytest.fixture(scope="module")
def terminal_target():
    """No EOS (every completion runs to T = 3): the reward arrives only at the last token."""
    lm = tiny_lm("gpt2", vocab_size=8, seed=0)
    lm.eos_token_id = None
    return br.Target(prior=lm, reward=first_word_reward(), beta=1.5, max_new_tokens=3)


def test_bootstrap_with_terminal_reward_is_importance_sampling_and_says_so(terminal_target):
    # ess_threshold = 1 resamples whenever the weights differ; bootstrap weights never do before T
    ws = smc(terminal_target, [PROMPT, "w3"], 16, ess_threshold=1.0, generator=torch.Generator().manual_seed(0))
    assert bool(ws.mask.all())
    assert ws.info["resampling_steps"] == 0 and int(ws.history.resampled.sum()) == 0
    assert "importance sampling" in ws.info["note"] and "twist='prefix'" in ws.info["note"]
    assert [row["num_resampling_steps"] for row in ws.summary()] == [0, 0]
    # the final weights are the importance weights r / beta of prior samples
    assert torch.allclose(ws.log_weights, ws.rewards / terminal_target.beta, atol=1e-12)


def test_twist_prefix_by_name_resamples_and_stays_unbiased(terminal_target):
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    # the prefix reward differs between particles once one has drawn w0: with 64 particles some do
    named = smc(terminal_target, PROMPT, 64, twist="prefix", ess_threshold=1.0, generator=g())
    built = smc(terminal_target, PROMPT, 64, twist=PrefixPotential(terminal_target.reward), ess_threshold=1.0,
                generator=g())
    assert torch.equal(named.ids, built.ids) and torch.equal(named.log_z, built.log_z)
    assert named.info["resampling_steps"] > 0 and "note" not in named.info
    assert named.summary()[0]["num_resampling_steps"] == named.info["resampling_steps"]
    # E[exp(log_z)] = Z: the mean of exp(log_z - log Z) over R = 200 runs is 1 within 3 run-SE
    post = br.exact_posterior(terminal_target, PROMPT)
    R = 200
    ws = smc(terminal_target, [PROMPT] * R, 8, twist="prefix", ess_threshold=1.0, generator=g())
    z = torch.exp(ws.log_z - post.log_z)
    assert abs(float(z.mean()) - 1.0) < 3 * float(z.std() / math.sqrt(R))


def test_twist_exact_by_name_matches_the_posterior_twist(mild_target, mild_post):
    a = smc(mild_target, [PROMPT, PROMPT], 8, twist="exact", generator=torch.Generator().manual_seed(5))
    b = smc(mild_target, [PROMPT, PROMPT], 8, twist=mild_post, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.ids, b.ids) and torch.equal(a.log_z, b.log_z)
    # with the exact proposal too, log Z is exact (zero variance)
    c = smc(mild_target, PROMPT, 8, twist="exact", proposal=mild_post, generator=torch.Generator().manual_seed(5))
    assert abs(float(c.log_z[0]) - mild_post.log_z) < 1e-10


def test_unknown_twist_name_refused(mild_target):
    with pytest.raises(ConfigError, match="twist 'optimal' is not known.*'prefix'"):
        smc(mild_target, PROMPT, 4, twist="optimal", generator=torch.Generator().manual_seed(0))
