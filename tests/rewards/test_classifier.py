"""A classifier's logit or log-probability as a reward (``rewards/classifier.py``)."""

from __future__ import annotations

import pytest
import torch

import bayes_rlhf as br


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
