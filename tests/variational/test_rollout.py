"""``make_rollout``: the prior's log-probs of the draws, scored or taken from the sampler."""

from __future__ import annotations

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
