"""Ancestral sampling: a model restricted to a truncated prior's support keeps the prior's log-probs."""

from __future__ import annotations

import torch

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
