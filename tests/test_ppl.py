"""The pyro bridge: the LM as a pyro distribution, ELBO = RL objective / beta, Importance and SVI."""

from __future__ import annotations

import copy
import math

import pyro
import pyro.poutine as poutine
import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf import ppl
from bayes_rlhf.errors import ConfigError, TokenizerMismatchError
from bayes_rlhf.models.toy import tiny_lm
from bayes_rlhf.samplers import importance_sample
from tests.conftest import first_word_reward

PROMPT = "w1 w2"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; pyro's parameter store is cleared around each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    pyro.clear_param_store()
    yield
    torch.set_num_threads(before)
    pyro.clear_param_store()


@pytest.fixture(scope="module")
def target(gpt2_lm):
    return br.Target(prior=gpt2_lm, reward=first_word_reward(), beta=1.5, max_new_tokens=4)


@pytest.fixture(scope="module")
def post(target):
    return br.exact_posterior(target, PROMPT)


@pytest.fixture(scope="module")
def policy():
    return tiny_lm("gpt2", vocab_size=8, seed=3)


def test_completion_distribution_sample_and_log_prob(gpt2_lm):
    d = ppl.CompletionDistribution(gpt2_lm, PROMPT, 4, generator=torch.Generator().manual_seed(0))
    x = d.sample((3, 2))
    assert x.shape == (3, 2, 4) and x.dtype == torch.long
    flat = x.reshape(-1, 4)
    mask = ppl.completion_mask(flat, gpt2_lm.eos_token_id)
    expected = gpt2_lm.score(PROMPT, flat, mask).sum(-1).reshape(3, 2)
    assert torch.allclose(d.log_prob(x), expected, atol=1e-10)
    # tokens after the first EOS are padding: changing them does not change the log-prob
    y = torch.tensor([[3, 2, 5, 6]])
    z = torch.tensor([[3, 2, 0, 0]])
    assert torch.allclose(d.log_prob(y), d.log_prob(z))
    assert ppl.completion_mask(y, 2).tolist() == [[True, True, False, False]]


def test_trace_log_weight_is_log_density_ratio(target, policy):
    g = torch.Generator().manual_seed(1)
    model = ppl.posterior_model(target, PROMPT, generator=g)
    guide = ppl.policy_guide(target, PROMPT, policy, generator=g)
    guide_tr = poutine.trace(guide).get_trace()
    model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace()
    x = guide_tr.nodes["x"]["value"].reshape(1, 4)
    mask = ppl.completion_mask(x, target.prior.eos_token_id)
    expected = target.log_density(PROMPT, x, mask) - policy.score(PROMPT, x, mask).sum(-1)
    got = model_tr.log_prob_sum() - guide_tr.log_prob_sum()
    assert float(got.detach()) == pytest.approx(float(expected), abs=1e-10)


@pytest.mark.slow
def test_elbo_is_rl_objective_over_beta(target, post, policy):
    # pyro's Trace_ELBO over 3000 vectorised particles vs the exact (E_q[r] - beta KL(q || pi0)) / beta.
    # The SE is sd(log w) / sqrt(3000), with sd(log w) estimated from 3000 of our own draws; 4 SE.
    g = torch.Generator().manual_seed(2)
    exact = br.compare(policy, post).objective / target.beta
    est = ppl.elbo(target, PROMPT, policy, num_particles=3000, generator=g)
    log_w = importance_sample(target, PROMPT, 3000, proposal=policy, generator=g).log_weights
    se = float(log_w.std() / math.sqrt(3000))
    assert abs(est - exact) < 4 * se


def test_importance_log_normaliser_agrees(target, post):
    # pyro's vectorised importance sampling and importance_sample (both from the prior, 4000 draws)
    # estimate log Z; relative variance of the weights ~1.4, so each log Z_hat has SE ~ 0.02; we
    # allow 4 SE around the exact value and 4 * sqrt(2) SE between them.
    g = torch.Generator().manual_seed(3)
    pyro_ws = ppl.pyro_importance(target, PROMPT, 4000, generator=g)
    ours = importance_sample(target, PROMPT, 4000, generator=g)
    se = math.sqrt(1.4 / 4000)
    assert abs(float(pyro_ws.log_z) - post.log_z) < 4 * se
    assert abs(float(pyro_ws.log_z) - float(ours.log_z)) < 4 * math.sqrt(2) * se
    assert torch.allclose(pyro_ws.log_weights, pyro_ws.rewards / target.beta, atol=1e-10)


def test_pyro_importance_class_runs_with_our_weights(target):
    g = torch.Generator().manual_seed(4)
    imp = pyro.infer.Importance(ppl.posterior_model(target, PROMPT, generator=g), num_samples=20).run()
    for tr, lw in zip(imp.exec_traces, imp.log_weights):
        x = tr.nodes["x"]["value"].reshape(1, 4)
        r = target.rewards(PROMPT, x, ppl.completion_mask(x, target.prior.eos_token_id))
        assert float(lw) == pytest.approx(float(r[0]) / target.beta, abs=1e-10)
    assert math.isfinite(float(imp.get_log_normalizer()))


@pytest.mark.slow
def test_svi_moves_policy_towards_posterior(target, post, policy):
    # 60 SVI steps with score-function gradients from a copy of the prior: the exact KL(q || pi*)
    # must fall clearly (it starts at KL(pi0 || pi*) ~ 0.5 nats here).
    q = copy.deepcopy(target.prior)
    start = br.compare(q, post).kl_q_posterior
    losses = ppl.fit_policy_svi(target, PROMPT, q, steps=60, lr=3e-3, num_particles=128,
                                generator=torch.Generator().manual_seed(5))
    assert len(losses) == 60
    assert br.compare(q, post).kl_q_posterior < 0.7 * start


def test_bad_input(target):
    with pytest.raises(ConfigError):
        ppl.CompletionDistribution(object(), PROMPT, 4)
    with pytest.raises(ConfigError):
        ppl.CompletionDistribution(target.prior, PROMPT, 0)
    with pytest.raises(TokenizerMismatchError):
        ppl.policy_guide(target, PROMPT, tiny_lm("gpt2", vocab_size=10, seed=0))
    with pytest.raises(ConfigError):
        ppl.fit_policy_svi(target, PROMPT, target.prior, steps=0)
