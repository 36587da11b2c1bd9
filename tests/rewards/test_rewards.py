"""Rewards: the protocol, checks that name the reward, constraints, sums, a classifier reward."""

import math

import numpy as np
import pytest
import torch

import bayes_rlhf as br


@pytest.fixture
def batch(gpt2_lm):
    ids, mask = gpt2_lm.encode_completions(["w0 w1", "w2", "w0 w0 w0"], 3)
    return ids, mask


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


def test_constraint_and_weighted_sum(gpt2_lm, batch):
    ids, mask = batch
    short = br.Constraint(lambda p, c: [len(x.split()) <= 2 for x in c], name="short")
    length = br.TokenReward(lambda i, m: m.sum(-1).double(), name="length")
    total = br.WeightedSum([(1.0, short), (0.5, length)])
    out = br.evaluate_reward(total, gpt2_lm, ["w0"] * 3, ids, mask)
    assert out.tolist() == [1.0, 0.5, -math.inf]
    assert "short" in total.name and "length" in total.name


def test_classifier_reward(gpt2_lm, batch):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=8, n_positions=16, n_embd=16, n_layer=1, n_head=2, num_labels=2,
                     pad_token_id=0, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    clf = GPT2ForSequenceClassification(cfg).eval()
    logit = br.ClassifierReward(clf, tokenizer=gpt2_lm.tokenizer, label="pos", device="cpu")
    logp = br.ClassifierReward(clf, tokenizer=gpt2_lm.tokenizer, label=1, kind="log_prob", device="cpu")
    a = br.evaluate_reward(logit, gpt2_lm, ["w0"] * 3, *batch)
    b = br.evaluate_reward(logp, gpt2_lm, ["w0"] * 3, *batch)
    assert a.shape == (3,) and bool((b < 0).all())
    with pytest.raises(br.RewardError, match="labels"):
        br.ClassifierReward(clf, tokenizer=gpt2_lm.tokenizer, label="happy")
