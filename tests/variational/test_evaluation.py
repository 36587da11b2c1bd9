"""train_policy's evaluators as one protocol: every old argument form converted once, a user's
Evaluator called as documented, and the exact evaluator re-tilted to a moved beta."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.variational import SandwichEvaluator, TrainerConfig, train_policy
from bayes_rlhf.variational.evaluation import Evaluator, ExactEvaluator, as_evaluator


def test_every_form_is_converted_once(small_posts):
    post = small_posts["w0"]
    assert as_evaluator(None) is None and as_evaluator(False) is None and as_evaluator([]) is None
    every = as_evaluator(True)
    assert isinstance(every, ExactEvaluator) and every.table is None
    for form in (post, [post], (post,), {"w0": post}, small_posts.values()):
        ev = as_evaluator(form)
        assert isinstance(ev, ExactEvaluator) and all(ev.table[p] is small_posts[p] for p in ev.table)
    sandwich = SandwichEvaluator({"w0": post.sample(8, generator=torch.Generator().manual_seed(0))})
    assert as_evaluator(sandwich) is sandwich and isinstance(sandwich, Evaluator)
    mine = Recorder()
    assert as_evaluator(mine) is mine
    with pytest.raises(ConfigError, match="evaluator must be"):
        as_evaluator(42)
    with pytest.raises(ConfigError, match="evaluator entries must be ExactPosterior"):
        as_evaluator([post, "w1"])
    with pytest.raises(ConfigError, match="not a training prompt"):
        as_evaluator(small_posts).check(["w0"])


class Recorder:
    """A user-written evaluator: records what train_policy calls, logs one column."""

    follows_beta = True

    def __init__(self):
        self.calls = []

    def check(self, prompts):
        self.calls.append(("check", tuple(prompts)))

    def prepare(self, target, prompts):
        self.calls.append(("prepare", tuple(prompts)))
        return {}

    def evaluate(self, policy, target):
        self.calls.append(("evaluate",))
        return {"my_metric": float(len(self.calls))}


def test_a_user_evaluator_is_called_as_documented(small_target, fast_config):
    ev = Recorder()
    _, hist = train_policy(small_target, ["w0", "w1 w2"], fast_config(steps=4, eval_every=2), evaluator=ev)
    prompts = ("w0", "w1 w2")
    assert ev.calls == [("check", prompts), ("prepare", prompts), ("evaluate",), ("evaluate",)]
    assert [r.get("my_metric") for r in hist.rows] == [None, 3.0, None, 4.0]


def test_user_evaluator_is_refused_with_a_kl_controller_unless_it_follows_beta(small_target, fast_config):
    ev = Recorder()
    ev.follows_beta = False
    with pytest.raises(ConfigError, match="kl_target"):
        train_policy(small_target, ["w0"], fast_config(steps=1, kl_target=0.5), evaluator=ev)
    assert ev.calls == [("check", ("w0",))]  # refused before any preparation


def test_exact_evaluator_retilts_to_the_steps_beta(small_target, small_posts):
    # At another beta the evaluator compares with pi*_beta' of the same table: equal to a fresh
    # enumeration at beta' to rounding (1e-9: both are sums of the same float64 table).
    ev = ExactEvaluator(small_posts)
    assert ev.prepare(small_target, list(small_posts)) == small_posts
    policy = small_target.prior
    moved = dataclasses.replace(small_target, beta=2 * small_target.beta)
    got = ev.evaluate(policy, moved)
    fresh = [br.compare(policy, br.exact_posterior(moved, p)) for p in small_posts]
    assert abs(got["kl_q_posterior"] - sum(c.kl_q_posterior for c in fresh) / 2) < 1e-9
    assert abs(got["kl_posterior_q"] - sum(c.kl_posterior_q for c in fresh) / 2) < 1e-9
    same = ev.evaluate(policy, small_target)
    assert abs(same["kl_q_posterior"] - sum(br.compare(policy, q).kl_q_posterior
                                            for q in small_posts.values()) / 2) < 1e-12


def test_a_posterior_without_its_model_evaluates(small_target, small_posts):
    # a table read back from a run directory holds only its Vocabulary (lm None): enough to check and evaluate
    bare = {p: dataclasses.replace(q, lm=None) for p, q in small_posts.items()}
    ev, ref = as_evaluator(bare), as_evaluator(small_posts)
    ev.prepare(small_target, list(bare))
    ref.prepare(small_target, list(small_posts))
    assert ev.evaluate(small_target.prior, small_target) == ref.evaluate(small_target.prior, small_target)


def test_an_exact_posterior_of_another_prior_is_refused(small_target, fast_config):
    # it once logged KL(q || pi*) = 0.60 against a pi* of another model (the true value 0.09)
    from bayes_rlhf.models.toy import tiny_lm

    other = br.Target(tiny_lm("gpt2", vocab_size=6, seed=4, hidden=16), small_target.reward, small_target.beta, 3)
    with pytest.raises(ConfigError, match="another prior"):
        train_policy(small_target, "w0", fast_config(steps=1), evaluator=br.exact_posterior(other, "w0"))
    truncated = br.Target(small_target.prior.with_top_k(3), small_target.reward, small_target.beta, 3)
    with pytest.raises(ConfigError, match="top_k=3"):
        train_policy(small_target, "w0", fast_config(steps=1), evaluator=br.exact_posterior(truncated, "w0"))


def test_sandwich_samples_of_another_horizon_are_refused(small_target, fast_config):
    short = br.Target(small_target.prior, small_target.reward, small_target.beta, 2)
    samples = br.exact_posterior(short, "w0").sample(16, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="2 token positions, the target max_new_tokens=3"):
        train_policy(small_target, "w0", fast_config(steps=1), evaluator=SandwichEvaluator({"w0": samples}))
