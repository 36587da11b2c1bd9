"""A reward that raises becomes a RewardError naming it and the first completion it fails on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bayes_rlhf as br


@pytest.fixture
def batch(gpt2_lm):
    return gpt2_lm.encode_completions(["w0 w1", "w2", "w0 w0 w0"], 3)


def picky(p, c):
    """A text reward that cannot score the word w2."""
    if any("w2" in x for x in c):
        raise ValueError("cannot score w2")
    return [1.0] * len(c)


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


def test_combinators_name_the_failing_part(gpt2_lm, batch):
    total = br.WeightedSum([(1.0, br.TokenReward(lambda i, m: m.sum(-1).double(), name="length")), (2.0, picky)])
    with pytest.raises(br.RewardError, match="'picky'.*completion 1 'w2'") as err:
        br.evaluate_reward(total, gpt2_lm, ["w0"] * 3, *batch)
    assert isinstance(err.value.__cause__, ValueError)
    broken = br.Constraint(lambda p, c: 1 / 0, name="broken_rule")
    with pytest.raises(br.RewardError, match="'broken_rule' raised ZeroDivisionError.*completion 0 'w0 w1'"):
        br.evaluate_reward(broken, gpt2_lm, ["w0"] * 3, *batch)


def test_samplers_and_exact_raise_the_reward_error(gpt2_lm):
    target = br.Target(gpt2_lm, picky, 1.0, 3)
    with pytest.raises(br.RewardError, match="'picky'.*'[^']*w2[^']*'") as err:
        br.exact_posterior(target, "w0")
    assert isinstance(err.value.__cause__, ValueError)
    with pytest.raises(br.RewardError, match="'picky'"):
        br.importance_sample(target, "w0", 64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(br.RewardError, match="'picky'"):
        br.smc(target, "w0", 64, generator=torch.Generator().manual_seed(0))


def test_object_arrays_and_bad_weights(gpt2_lm, batch):
    with pytest.raises(br.RewardError, match="dtype object"):
        br.evaluate_reward(lambda p, c: np.array([1.0, None, 2.0], dtype=object), gpt2_lm, ["w0"] * 3, *batch)
    length = br.TokenReward(lambda i, m: m.sum(-1).double(), name="length")
    for w in ("2", True, float("nan")):
        with pytest.raises(br.RewardError, match="WeightedSum weights"):
            br.WeightedSum([(w, length)])
    a = br.evaluate_reward(br.WeightedSum([(np.float32(0.5), length)]), gpt2_lm, ["w0"] * 3, *batch)
    assert a.tolist() == [1.0, 0.5, 1.5]
