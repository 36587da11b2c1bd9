"""Ancestral sampling: a model restricted to a truncated prior's support keeps the prior's log-probs; a LoRA
model samples with its base's log-probs computed in the same forwards."""

from __future__ import annotations

import copy

import pytest
import torch

from bayes_rlhf.errors import ConfigError
from bayes_rlhf.models.toy import tiny_lm


def test_support_log_probs_of_the_draws_equal_the_prior_scoring_them():
    prior = tiny_lm("llama", vocab_size=10, seed=3, top_k=3)
    policy = tiny_lm("llama", vocab_size=10, seed=8).with_support(prior)  # other weights, same words
    c = policy.sample(["w1 w2", "w3"], 6, 4, generator=torch.Generator().manual_seed(0))
    assert c.support_log_probs.shape == c.ids.shape and c.support_log_probs.dtype == torch.float64
    rows = ["w1 w2"] * 6 + ["w3"] * 6
    # float64 models: the cached one-token steps and the batch pass differ by rounding only
    torch.testing.assert_close(c.support_log_probs, prior.score(rows, c.ids, c.mask), atol=1e-10, rtol=1e-10)
    assert torch.isfinite(c.support_log_probs).all() and (c.support_log_probs[~c.mask] == 0).all()
    picked = c.select(torch.tensor([4, 0]))
    assert torch.equal(picked.support_log_probs, c.support_log_probs[[4, 0]])
    assert prior.sample("w1", 3, 2, generator=torch.Generator().manual_seed(0)).support_log_probs is None


def _lora_lm(seed):
    from peft import LoraConfig, get_peft_model

    from bayes_rlhf.models.causal_lm import CausalLM

    lm = tiny_lm("llama", vocab_size=16, seed=seed, dtype=torch.float32)
    torch.manual_seed(seed)  # test: peft draws its adapter init from the global generator
    model = get_peft_model(copy.deepcopy(lm.model), LoraConfig(r=2, lora_alpha=4, target_modules="all-linear",
                                                               lora_dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)  # peft starts B at 0: make the adapters matter
    return lm, CausalLM(model, lm.tokenizer, device="cpu")


def test_sample_with_base_draws_the_lora_model_and_scores_the_base_in_the_same_forwards():
    pytest.importorskip("peft")
    from bayes_rlhf.models import packed
    from bayes_rlhf.models.sampling import rides_along, sample_with_base

    if not packed.available():
        pytest.skip("torch without MKL's packed linear operators")
    base, policy = _lora_lm(seed=4)
    prompts = ["w1 w2", "w3"]
    assert rides_along(policy, 8) and not rides_along(base, 8) and not rides_along(policy, packed.MAX_ROWS)
    c, base_lp = sample_with_base(policy, prompts, 4, 5, generator=torch.Generator().manual_seed(3))
    plain = policy.sample(prompts, 4, 5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(c.ids, plain.ids) and torch.equal(c.mask, plain.mask)  # the LoRA model's own draws
    rows = [p for p in prompts for _ in range(4)]
    # float32 products over 16 rows instead of 8: rounding only (log-probs O(1), eps 1.2e-7)
    torch.testing.assert_close(c.log_probs, policy.score(rows, c.ids, c.mask).sum(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(base_lp, base.score(rows, c.ids, c.mask), atol=1e-5, rtol=1e-5)
    assert (base_lp[~c.mask] == 0).all()
    assert (base_lp - policy.score(rows, c.ids, c.mask)).abs().max() > 1e-2  # the adapters matter here
    with pytest.raises(ConfigError, match="sample and score the base"):
        sample_with_base(base, prompts, 4, 5)


def test_exp_log_probs_equals_exp_in_float64_with_and_without_minus_inf():
    from bayes_rlhf.models.sampling import exp_log_probs

    g = torch.Generator().manual_seed(0)
    dense = torch.randn(3, 500, generator=g) * 20 - 30  # down to exp(-130): below float32's range
    part = dense.masked_fill(torch.rand(3, 500, generator=g) < 0.4, float("-inf"))
    part[2] = float("-inf")  # a row with no mass stays all zeros
    for x in (dense, part, dense.double()):
        got, ref = exp_log_probs(x), torch.exp(x.double())
        assert got.dtype == torch.float64
        assert torch.equal(got == 0, ref == 0)
        torch.testing.assert_close(got, ref, rtol=1e-14, atol=0)


def test_sample_categorical_draws_the_law_of_a_sparse_row():
    # a top-k-like row (all but 3 entries -inf): draws land on the finite entries in their proportions
    from bayes_rlhf.models.sampling import sample_categorical

    lp = torch.full((4000, 50), float("-inf"))
    lp[:, [3, 17, 41]] = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    idx = sample_categorical(lp, generator=torch.Generator().manual_seed(1))
    counts = torch.bincount(idx, minlength=50)
    assert counts.sum() == counts[[3, 17, 41]].sum()
    freq = counts[[3, 17, 41]].double() / 4000
    se = torch.sqrt(torch.tensor([0.5 * 0.5, 0.3 * 0.7, 0.2 * 0.8], dtype=torch.float64) / 4000)
    assert ((freq - torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)).abs() < 4 * se).all()
