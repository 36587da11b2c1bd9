"""Rewards' protocol (``rewards/base.py``): text and token rewards evaluated, bad values named, and a
reward that raises becomes a RewardError naming it and the first completion it fails on."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import bayes_rlhf as br
from tests.rewards.conftest import picky


def test_text_and_token_rewards(gpt2_lm, batch):
    ids, mask = batch
    text = br.evaluate_reward(lambda p, c: [float(len(x)) for x in c], gpt2_lm, ["w0"] * 3, ids, mask)
    assert text.tolist() == [5.0, 2.0, 8.0] and text.dtype == torch.float64
    tok = br.evaluate_reward(br.TokenReward(lambda i, m: m.sum(-1)), gpt2_lm, ["w0"] * 3, ids, mask)
    assert tok.tolist() == [2.0, 1.0, 3.0]
    arr = br.evaluate_reward(lambda p, c: np.ones(len(c)), gpt2_lm, ["w0"] * 3, ids, mask)
    assert arr.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("fn, match", [
    (lambda p, c: [float("nan")] * len(c), "NaN"),
    (lambda p, c: [1.0] * (len(c) + 1), "shape"),
    (lambda p, c: "good", "str"),
    (lambda p, c: ["a"] * len(c), "str"),
    (lambda p, c: [math.inf] * len(c), r"\+inf"),
])
def test_bad_rewards_are_named(gpt2_lm, batch, fn, match):
    fn.__name__ = "my_reward"
    with pytest.raises(br.RewardError, match=match) as err:
        br.evaluate_reward(fn, gpt2_lm, ["w0"] * 3, *batch)
    assert "my_reward" in str(err.value)


def test_bad_reward_stops_exact_before_writing(gpt2_lm):
    target = br.Target(gpt2_lm, lambda p, c: [float("nan")] * len(c), 1.0, 2)
    with pytest.raises(br.RewardError):
        br.exact_posterior(target, "w0")


def test_text_reward_error_names_reward_and_first_failing_completion(gpt2_lm, batch):
    with pytest.raises(br.RewardError) as err:
        br.evaluate_reward(picky, gpt2_lm, ["w0"] * 3, *batch)
    msg = str(err.value)
    assert "'picky'" in msg and "completion 1 'w2'" in msg and "ValueError: cannot score w2" in msg
    assert isinstance(err.value.__cause__, ValueError) and str(err.value.__cause__) == "cannot score w2"


def test_token_reward_error_decodes_the_failing_completion(gpt2_lm, batch):
    def too_long(ids, mask):
        lengths = mask.sum(-1)
        if bool((lengths > 2).any()):
            raise RuntimeError("longer than 2")
        return lengths.double()

    with pytest.raises(br.RewardError, match=r"'too_long' raised RuntimeError: longer than 2 on completion 2 "
                                             r"'w0 w0 w0' \(prompt 'w0'\)") as err:
        br.evaluate_reward(br.TokenReward(too_long), gpt2_lm, ["w0"] * 3, *batch)
    assert isinstance(err.value.__cause__, RuntimeError)


def test_batch_only_failure_is_reported_as_such(gpt2_lm, batch):
    def one_at_a_time(p, c):
        if len(c) > 1:
            raise MemoryError("batch too large")
        return [0.0]

    with pytest.raises(br.RewardError, match="on a batch of 3 completions") as err:
        br.evaluate_reward(one_at_a_time, gpt2_lm, ["w0"] * 3, *batch)
    assert "'w0 w1'" in str(err.value) and isinstance(err.value.__cause__, MemoryError)


def test_deliberate_errors_and_interrupts_pass_through(gpt2_lm, batch):
    mine = br.PromptError("the reward refuses this prompt")

    def deliberate(p, c):
        raise mine

    with pytest.raises(br.PromptError) as err:
        br.evaluate_reward(deliberate, gpt2_lm, ["w0"] * 3, *batch)
    assert err.value is mine

    def interrupted(p, c):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        br.evaluate_reward(interrupted, gpt2_lm, ["w0"] * 3, *batch)


def test_samplers_and_exact_raise_the_reward_error(gpt2_lm):
    target = br.Target(gpt2_lm, picky, 1.0, 3)
    with pytest.raises(br.RewardError, match="'picky'.*'[^']*w2[^']*'") as err:
        br.exact_posterior(target, "w0")
    assert isinstance(err.value.__cause__, ValueError)
    with pytest.raises(br.RewardError, match="'picky'"):
        br.importance_sample(target, "w0", 64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(br.RewardError, match="'picky'"):
        br.smc(target, "w0", 64, generator=torch.Generator().manual_seed(0))


def test_a_contains_spec_with_a_word_the_tokenizer_cannot_spell_is_refused():
    # on the word-level default model "zzz" never occurs: the reward would be 0 everywhere, silently
    import bayes_rlhf as br
    from bayes_rlhf.errors import RewardError
    from bayes_rlhf.rewards.spec import parse_reward

    lm, _ = br.default_model()
    with pytest.raises(RewardError, match="'zzz'.*0 on every completion"):
        parse_reward("contains:zzz", lm)
    reward = parse_reward("contains:great", lm)
    assert reward(["p", "p"], ["a great great movie", "bad"]) == [2.0, 0.0]
