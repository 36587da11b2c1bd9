"""``make_rollout``: the prior's log-probs of the draws, scored or taken from the sampler."""

from __future__ import annotations

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.models.toy import tiny_lm
from bayes_rlhf.variational import rollout as ro
from bayes_rlhf.variational.sources import POLICY, make_draw
from tests.conftest import first_word_reward


def _rollout(target, policy, monkeypatch):
    scored = []
    score = type(target.prior).score
    monkeypatch.setattr(type(target.prior), "score", lambda self, *a, **k: scored.append(self) or score(self, *a, **k))
    draw = make_draw(POLICY, target, policy, 5)
    out, _, _ = ro.make_rollout(target, ["w1 w2"], [0], draw, torch.Generator().manual_seed(2), "policy",
                                lambda rows, ids, mask: (policy.score(rows, ids, mask), None))
    monkeypatch.undo()
    return out, [lm for lm in scored if lm is target.prior]


def test_a_policy_on_the_truncated_prior_support_brings_the_prior_log_probs(monkeypatch):
    prior = tiny_lm("llama", vocab_size=10, seed=3, top_k=3)
    target = br.Target(prior, first_word_reward(), 0.5, 3)
    out, prior_scored = _rollout(target, tiny_lm("llama", vocab_size=10, seed=8).with_support(prior), monkeypatch)
    assert not prior_scored                          # the sampler's prior log-probs were used
    expected = prior.score(list(out.rows), out.ids, out.mask).double()
    torch.testing.assert_close(out.prior_logp, expected, atol=1e-10, rtol=1e-10)  # float64: rounding only


def test_an_unrestricted_policy_has_its_draws_scored_by_the_prior(monkeypatch):
    prior = tiny_lm("llama", vocab_size=10, seed=3)
    target = br.Target(prior, first_word_reward(), 0.5, 3)
    out, prior_scored = _rollout(target, tiny_lm("llama", vocab_size=10, seed=8), monkeypatch)
    assert prior_scored
    torch.testing.assert_close(out.prior_logp, prior.score(list(out.rows), out.ids, out.mask).double(),
                               atol=0, rtol=0)


def test_a_lora_policy_brings_the_prior_log_probs_from_its_own_forwards_and_the_gradient_is_unchanged(monkeypatch):
    pytest.importorskip("peft")
    from bayes_rlhf.models import packed
    from bayes_rlhf.variational import sources
    from bayes_rlhf.variational.config import TrainerConfig
    from bayes_rlhf.variational.policy import make_policy

    if not packed.available():
        pytest.skip("torch without MKL's packed linear operators")
    prior = tiny_lm("llama", vocab_size=10, seed=3, dtype=torch.float32)
    target = br.Target(prior, first_word_reward(), 0.5, 3)
    config = TrainerConfig(lora_rank=2, seed=0)
    policy = make_policy(prior, config)
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)  # as after some training: the policy differs from its base
    assert sources.base_is_prior(policy, prior) and not sources.base_is_prior(prior, prior)
    along, prior_scored = _rollout(target, policy, monkeypatch)
    assert not prior_scored                          # the prior rode along the sampling forwards
    monkeypatch.setattr(sources, "rides_along", lambda lm, rows: False)
    plain, prior_scored = _rollout(target, policy, monkeypatch)
    assert prior_scored and torch.equal(along.ids, plain.ids)
    # float32 products on 2n rows against a separate scoring pass: rounding only (eps 1.2e-7, values O(1))
    torch.testing.assert_close(along.prior_logp, plain.prior_logp, atol=1e-5, rtol=1e-5)
    grads = []
    for out in (along, plain):
        logq, _ = ro.forward(policy, list(out.rows), out.ids, out.mask)
        loss = config.bound_objective().loss(ro.policy_batch(out, target.beta, logq, None)).loss
        params = [p for p in policy.model.parameters() if p.requires_grad]
        grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)  # the same gradient up to that rounding
    assert grads[1].abs().max() > 1e-3


def test_a_lora_policy_whose_base_is_not_the_prior_is_scored_by_the_prior():
    pytest.importorskip("peft")
    from bayes_rlhf.variational import sources
    from bayes_rlhf.variational.config import TrainerConfig
    from bayes_rlhf.variational.policy import make_policy

    prior = tiny_lm("llama", vocab_size=10, seed=3, dtype=torch.float32)
    policy = make_policy(tiny_lm("llama", vocab_size=10, seed=4, dtype=torch.float32), TrainerConfig(lora_rank=2))
    assert not sources.base_is_prior(policy, prior)   # other base weights
    truncated = tiny_lm("llama", vocab_size=10, seed=3, dtype=torch.float32, top_k=3)
    assert not sources.base_is_prior(make_policy(truncated, TrainerConfig(lora_rank=2)), truncated)
