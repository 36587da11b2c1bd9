"""WeightedSamples: per-prompt normalisation, ESS, expectations, SIR, validation."""

from __future__ import annotations

import math

import pytest
import torch

from bayes_rlhf.errors import ConfigError
from bayes_rlhf.models.vocabulary import Vocabulary
from bayes_rlhf.samplers import WeightedSamples, kish_ess


def _samples(gpt2_lm):
    ids = torch.tensor([[3, 2, 0], [4, 4, 2], [3, 3, 3], [5, 2, 0]])
    mask = ids != 0
    lw = torch.tensor([0.0, math.log(3.0), 1.0, -math.inf], dtype=torch.float64)
    r = torch.tensor([1.0, 2.0, 5.0, -math.inf], dtype=torch.float64)
    return WeightedSamples(ids, mask, lw, r, torch.zeros(2, dtype=torch.float64), torch.tensor([0, 0, 1, 1]),
                           ("a", "b"), gpt2_lm)


def test_normalisation_ess_and_expectation(gpt2_lm):
    ws = _samples(gpt2_lm)
    w = ws.normalized_weights()
    assert torch.allclose(w, torch.tensor([0.25, 0.75, 1.0, 0.0], dtype=torch.float64))
    assert torch.allclose(ws.ess, torch.tensor([1 / (0.25 ** 2 + 0.75 ** 2), 1.0], dtype=torch.float64))
    # the -inf reward sits at zero weight and does not poison the mean
    assert torch.allclose(ws.mean_reward, torch.tensor([1.75, 5.0], dtype=torch.float64))
    assert ws.texts[0] == "w0" and ws.texts[2] == "w0 w0 w0"
    assert kish_ess(torch.full((3,), -math.inf)) == 0.0
    assert [s["prompt"] for s in ws.summary()] == ["a", "b"]


def test_resample_draws_only_positive_weight_rows_per_prompt(gpt2_lm):
    ws = _samples(gpt2_lm)
    c = ws.resample(200, generator=torch.Generator().manual_seed(0))
    assert len(c) == 400 and torch.equal(c.prompt_index, torch.tensor([0] * 200 + [1] * 200))
    assert bool((c.ids[200:] == torch.tensor([3, 3, 3])).all())
    frac = float((c.ids[:200, 0] == 4).double().mean())
    assert abs(frac - 0.75) < 4 * math.sqrt(0.75 * 0.25 / 200)  # binomial SE
    with pytest.raises(ConfigError):
        ws.resample(0)


def test_shape_validation(gpt2_lm):
    with pytest.raises(ConfigError, match="rows"):
        WeightedSamples(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool),
                        torch.zeros(3), torch.zeros(2), torch.zeros(1), torch.zeros(2, dtype=torch.long), ("a",),
                        gpt2_lm)
    with pytest.raises(ConfigError, match="log_z"):
        WeightedSamples(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool),
                        torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.zeros(2, dtype=torch.long), ("a",),
                        gpt2_lm)


def test_a_model_is_kept_as_its_vocabulary_anything_else_is_refused(gpt2_lm):
    ws = _samples(gpt2_lm)  # given the CausalLM: the samples hold its Vocabulary, not the model
    assert isinstance(ws.vocabulary, Vocabulary) and ws.vocabulary.same_as(gpt2_lm.vocabulary)
    assert _samples(gpt2_lm.vocabulary).texts == ws.texts
    for bad in ("gpt2", gpt2_lm.tokenizer, None):
        with pytest.raises(ConfigError, match="WeightedSamples.vocabulary must be a Vocabulary or a CausalLM"):
            _samples(bad)


def test_repr_is_one_short_line_for_samples_and_completions():
    # printing a sampler's output in a notebook used to print every tensor (thousands of lines)
    import bayes_rlhf as br

    lm, reward = br.default_model()
    target = br.Target(prior=lm, reward=reward, beta=1.0, max_new_tokens=4)
    prompts = ["the movie was", "the book was", "the food was", "the service was"]
    ws = br.importance_sample(target, prompts, 512, generator=torch.Generator().manual_seed(0))
    text = repr(ws)
    assert "\n" not in text and len(text) < 200, text
    assert text.startswith("WeightedSamples(2048 rows of 4 prompt(s), T=4")
    assert f"{float(ws.log_z[0]):.4f}" in text and "... (4)" in text
    comp = ws.completions()
    text = repr(comp)
    assert "\n" not in text and text.startswith("Completions(2048 rows of 4 prompt(s), T=4, source=")
