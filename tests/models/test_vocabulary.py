"""Vocabulary: encode/decode round trip, EOS cut, same_as, and the results that hold one."""

from __future__ import annotations

import math

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.errors import ConfigError, PromptError
from bayes_rlhf.exact.posterior import ExactPosterior
from bayes_rlhf.models.toy import tiny_lm, word_tokenizer
from bayes_rlhf.models.vocabulary import Vocabulary
from bayes_rlhf.samplers import WeightedSamples


def test_encode_cuts_at_eos_pads_and_decodes(gpt2_lm):
    vocab = gpt2_lm.vocabulary
    assert (vocab.size, vocab.eos_token_id, vocab.pad_id) == (8, 2, 0)
    ids, mask = vocab.encode(["w0 w1", "w2 </s> w3", "w0 w1 w2 w3 w4"], 3)
    assert ids.tolist() == [[3, 4, 0], [5, 2, 0], [3, 4, 5]]
    assert mask.tolist() == [[True, True, False], [True, True, False], [True, True, True]]
    assert vocab.decode(ids, mask) == ["w0 w1", "w2", "w0 w1 w2"]  # EOS and padding removed
    assert vocab.pad([[3, 2, 4], [4]], 2)[0].tolist() == [[3, 2], [4, 0]]
    with pytest.raises(PromptError, match="'nope'"):
        vocab.encode(["w0 nope"], 3)


def test_causal_lm_text_methods_are_its_vocabulary(gpt2_lm):
    ids, mask = gpt2_lm.encode_completions(["w1 w0", "w3"], 4)
    v_ids, v_mask = gpt2_lm.vocabulary.encode(["w1 w0", "w3"], 4)
    assert torch.equal(ids, v_ids) and torch.equal(mask, v_mask)
    assert gpt2_lm.decode(ids, mask) == gpt2_lm.vocabulary.decode(ids, mask) == ["w1 w0", "w3"]


def test_encode_prompt_is_the_models(gpt2_lm):
    vocab = gpt2_lm.vocabulary
    for prompt in ("w1 w2", "w0", ""):  # "" starts from BOS alone
        assert vocab.encode_prompt(prompt) == gpt2_lm.encode_prompt(prompt)
    assert vocab.encode_prompt("") == [gpt2_lm.tokenizer.bos_token_id]
    with pytest.raises(PromptError, match="'nope'"):
        vocab.encode_prompt("w0 nope")
    with pytest.raises(PromptError, match="must be a str"):
        vocab.encode_prompt(["w0"])


def test_same_as(gpt2_lm, llama_lm):
    vocab = gpt2_lm.vocabulary
    assert vocab.same_as(gpt2_lm.vocabulary) and vocab.same_as(llama_lm.vocabulary)  # equal words, EOS, size
    copy = Vocabulary(word_tokenizer([f"w{i}" for i in range(5)]), 8, 2, 0)  # another tokenizer object
    assert vocab.same_as(copy)
    assert not vocab.same_as(Vocabulary(copy.tokenizer, 9, 2, 0))
    assert not vocab.same_as(Vocabulary(copy.tokenizer, 8, None, 0))
    assert not vocab.same_as(tiny_lm("gpt2", vocab_size=9, seed=0).vocabulary)
    assert not vocab.same_as(gpt2_lm)  # a model is not a vocabulary
    assert gpt2_lm.same_tokenizer(llama_lm) and not gpt2_lm.same_tokenizer(tiny_lm("gpt2", vocab_size=9))


def test_posterior_from_a_vocabulary_alone_reads_like_one_with_its_model(gpt2_post):
    bare = ExactPosterior(gpt2_post.prompt, gpt2_post.completion_ids, gpt2_post.mask, gpt2_post.prior_log_probs,
                          gpt2_post.rewards, gpt2_post.beta, vocabulary=gpt2_post.vocabulary)
    assert bare.lm is None and gpt2_post.vocabulary.same_as(gpt2_post.lm.vocabulary)
    assert bare.completions == gpt2_post.completions and bare.top(3) == gpt2_post.top(3)
    text = gpt2_post.top(1)[0]["completion"]
    assert bare.log_prob(text) == gpt2_post.log_prob(text) > -math.inf
    assert torch.equal(bare.token_posterior([]), gpt2_post.token_posterior([]))
    with pytest.raises(PromptError, match="EOS"):
        bare.token_posterior([gpt2_post.vocabulary.eos_token_id])
    with pytest.raises(ConfigError, match="vocabulary"):
        ExactPosterior(bare.prompt, bare.completion_ids, bare.mask, bare.prior_log_probs, bare.rewards, 1.0)


def test_weighted_samples_keep_only_the_vocabulary(gpt2_lm):
    ids = torch.tensor([[3, 2], [4, 4]])
    args = (ids, ids != 0, torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64),
            torch.zeros(1, dtype=torch.float64), torch.zeros(2, dtype=torch.long), ("w0",))
    from_lm, from_vocab = WeightedSamples(*args, gpt2_lm), WeightedSamples(*args, gpt2_lm.vocabulary)
    assert isinstance(from_lm.vocabulary, Vocabulary) and not hasattr(from_lm, "lm")
    assert from_lm.texts == from_vocab.texts == ["w0", "w1 w1"]
    ws = br.importance_sample(br.Target(gpt2_lm, lambda p, c: [0.0] * len(c), 1.0, 2), "w0", 4,
                              generator=torch.Generator().manual_seed(0))
    assert isinstance(ws.vocabulary, Vocabulary) and len(ws.texts) == 4
