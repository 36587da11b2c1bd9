"""The sampled ELBO / EUBO sandwich against the exact values on an enumerable target."""

from __future__ import annotations

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.models.toy import tiny_lm
from bayes_rlhf.variational import SandwichEvaluator, train_policy


def test_sandwich_matches_exact_elbo_and_eubo(small_target, small_posts):
    post = small_posts["w0"]
    q = tiny_lm("gpt2", vocab_size=6, seed=11, hidden=16)  # a policy that is not the prior
    c = br.compare(q, post)
    ev = SandwichEvaluator({"w0": post.sample(4000, generator=torch.Generator().manual_seed(1))},
                           num_policy_samples=4000)
    out = ev.evaluate(q, small_target)
    # exact: ELBO = log Z - KL(q || pi*), EUBO = log Z + KL(pi* || q); both estimates are plain
    # Monte Carlo means, so 4 standard errors bound a false alarm at about 6e-5 each
    assert out["elbo"] == pytest.approx(post.log_z - c.kl_q_posterior, abs=4 * out["elbo_se"])
    assert out["eubo"] == pytest.approx(post.log_z + c.kl_posterior_q, abs=4 * out["eubo_se"])
    assert out["kl_sandwich"] >= max(c.kl_q_posterior, c.kl_posterior_q) - 4 * (out["elbo_se"] + out["eubo_se"])


def test_sandwich_evaluator_in_training_does_not_change_the_run(small_target, small_posts, fast_config):
    ev = SandwichEvaluator({p: post.sample(64, generator=torch.Generator().manual_seed(0))
                            for p, post in small_posts.items()},
                           num_policy_samples=64)
    _, with_eval = train_policy(small_target, list(small_posts), fast_config(steps=4, eval_every=2), evaluator=ev)
    _, without = train_policy(small_target, list(small_posts), fast_config(steps=4))
    assert with_eval.column("loss") == without.column("loss")
    rows = [r for r in with_eval.rows if r.get("kl_sandwich") is not None]
    assert [r["step"] for r in rows] == [2, 4] and all(r["eubo"] > r["elbo"] for r in rows)


def test_sandwich_bad_input(small_target):
    with pytest.raises(ConfigError, match="posterior_samples"):
        SandwichEvaluator({})
    with pytest.raises(ConfigError, match="Completions"):
        SandwichEvaluator({"w0": [1, 2]})
    with pytest.raises(ConfigError, match="num_policy_samples"):
        SandwichEvaluator({"w0": br.Completions(torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool),
                                               torch.zeros(1), torch.zeros(1, dtype=torch.long))},
                          num_policy_samples=1)
