"""Input types at every sampler entry point: generators must be torch.Generator (checked before any
model call), numpy numbers act exactly as Python numbers, bools and strings are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.models.causal_lm import CausalLM
from bayes_rlhf.samplers import (RESAMPLERS, SMC, LearnedTwist, SMCConfig, best_of_n, fit_twist, fit_twist_ctl,
                                 importance_sample, lower_bound, quasi_rejection_sample,
                                 sampling_importance_resampling, smc, upper_bound)

PROMPT = "w1 w2"
GEN_MSG = r"torch\.Generator\(\)\.manual_seed\(seed\)"
BAD_GENERATORS = [7, np.random.default_rng(0)]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def no_model_calls(monkeypatch):
    """Any forward pass of a CausalLM (sample, score, start, step) fails the test."""
    def boom(*args, **kwargs):
        raise AssertionError("the model ran before the generator was checked")

    for name in ("sample", "score", "start", "step", "token_log_probs"):
        monkeypatch.setattr(CausalLM, name, boom)


ENTRY_POINTS = {
    "importance_sample": lambda t, post, g: importance_sample(t, PROMPT, 4, generator=g),
    "sampling_importance_resampling": lambda t, post, g: sampling_importance_resampling(t, PROMPT, 8, 4,
                                                                                        generator=g),
    "best_of_n": lambda t, post, g: best_of_n(t, PROMPT, 2, generator=g),
    "quasi_rejection_sample": lambda t, post, g: quasi_rejection_sample(t, PROMPT, 8, 0.0, generator=g),
    "smc": lambda t, post, g: smc(t, PROMPT, 4, generator=g),
    "SMC.run": lambda t, post, g: SMC(t, [PROMPT], SMCConfig(4)).run(generator=g),
    "smc_twist_exact": lambda t, post, g: smc(t, PROMPT, 4, twist="exact", generator=g),
    "lower_bound": lambda t, post, g: lower_bound(t, PROMPT, 4, generator=g),
    "upper_bound": lambda t, post, g: upper_bound(t, PROMPT, post.sample(4, generator=gen()), generator=g),
    "fit_twist_ctl": lambda t, post, g: fit_twist_ctl(LearnedTwist(8), t, PROMPT, steps=1, num_samples=4,
                                                      generator=g),
    "fit_twist": lambda t, post, g: fit_twist(LearnedTwist(8), post, steps=1, generator=g),
    "exact_rejection_sample": lambda t, post, g: br.exact_rejection_sample(t, PROMPT, 2, reward_max=6.0,
                                                                           generator=g),
    "ExactPosterior.sample": lambda t, post, g: post.sample(4, generator=g),
}


@pytest.mark.parametrize("bad", BAD_GENERATORS, ids=["int", "numpy"])
@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_bad_generator_refused_before_any_model_call(mild_target, mild_post, no_model_calls, entry, bad):
    with pytest.raises(ConfigError, match=GEN_MSG):
        ENTRY_POINTS[entry](mild_target, mild_post, bad)


@pytest.mark.parametrize("bad", BAD_GENERATORS, ids=["int", "numpy"])
def test_bad_generator_refused_by_step_resample_and_resamplers(mild_target, bad):
    algo = SMC(mild_target, [PROMPT], SMCConfig(4))
    state = algo.init()
    with pytest.raises(ConfigError, match=GEN_MSG):
        algo.step(state, generator=bad)
    ws = importance_sample(mild_target, PROMPT, 8, generator=gen())
    with pytest.raises(ConfigError, match=GEN_MSG):
        ws.resample(4, generator=bad)
    for resampler in RESAMPLERS.values():
        with pytest.raises(ConfigError, match=GEN_MSG):
            resampler(ws.log_weights, 4, generator=bad)


def test_none_generator_still_allowed(mild_target, mild_post):
    assert len(importance_sample(mild_target, PROMPT, 4, generator=None)) == 4
    assert len(smc(mild_target, PROMPT, 4, generator=None)) == 4
    assert len(mild_post.sample(3, generator=None)) == 3


def test_numpy_numbers_same_results(mild_target, mild_post):
    # same seed and the same numbers as numpy scalars: bit-identical draws
    a = importance_sample(mild_target, PROMPT, 16, generator=gen(1))
    b = importance_sample(mild_target, PROMPT, np.int64(16), batch_size=np.int32(1024), generator=gen(1))
    assert torch.equal(a.ids, b.ids) and torch.equal(a.log_weights, b.log_weights)
    a = smc(mild_target, PROMPT, 8, ess_threshold=0.5, compact_threshold=0.25, generator=gen(2))
    b = smc(mild_target, PROMPT, np.int64(8), ess_threshold=np.float32(0.5), compact_threshold=np.float64(0.25),
            generator=gen(2))
    assert torch.equal(a.ids, b.ids) and torch.equal(a.log_z, b.log_z)
    assert a.info["num_particles"] == b.info["num_particles"] == 8
    a = best_of_n(mild_target, PROMPT, 4, num_samples=3, generator=gen(3))
    b = best_of_n(mild_target, PROMPT, np.int64(4), num_samples=np.uint8(3), generator=gen(3))
    assert torch.equal(a.ids, b.ids)
    a = quasi_rejection_sample(mild_target, PROMPT, 64, 0.5, generator=gen(4))
    b = quasi_rejection_sample(mild_target, PROMPT, np.int64(64), np.float32(0.5), generator=gen(4))
    assert torch.equal(a.ids, b.ids) and torch.equal(a.log_weights, b.log_weights)
    ws = importance_sample(mild_target, PROMPT, 32, generator=gen(5))
    assert torch.equal(ws.resample(5, generator=gen(6)).ids, ws.resample(np.int64(5), generator=gen(6)).ids)
    for resampler in RESAMPLERS.values():
        assert torch.equal(resampler(ws.log_weights, 6, generator=gen(7)),
                           resampler(ws.log_weights, np.int64(6), generator=gen(7)))
    lo = lower_bound(mild_target, PROMPT, 8, num_inner=2, generator=gen(8))
    assert lo == lower_bound(mild_target, PROMPT, np.int64(8), num_inner=np.int64(2), generator=gen(8))
    a = br.exact_rejection_sample(mild_target, PROMPT, 5, reward_max=6.0, batch_size=64, generator=gen(11))
    b = br.exact_rejection_sample(mild_target, PROMPT, np.int64(5), reward_max=np.float32(6.0),
                                  batch_size=np.int64(64), generator=gen(11))
    assert torch.equal(a.samples.ids, b.samples.ids) and a.log_z == b.log_z
    for bad in ("6", True, float("inf")):
        with pytest.raises(ConfigError, match="reward_max"):
            br.exact_rejection_sample(mild_target, PROMPT, 5, reward_max=bad, generator=gen())
    samples = mild_post.sample(6, generator=gen(9))
    assert upper_bound(mild_target, PROMPT, samples, num_inner=3, generator=gen(10)) == \
        upper_bound(mild_target, PROMPT, samples, num_inner=np.int16(3), generator=gen(10))


@pytest.mark.parametrize("bad", [True, "8", 8.0, np.float64(8.0)])
def test_bools_strings_floats_refused_as_counts(mild_target, bad):
    g = gen()
    with pytest.raises(ConfigError, match="num_samples"):
        importance_sample(mild_target, PROMPT, bad, generator=g)
    with pytest.raises(ConfigError, match="num_particles"):
        smc(mild_target, PROMPT, bad, generator=g)
    with pytest.raises(ConfigError, match="n must be"):
        best_of_n(mild_target, PROMPT, bad, generator=g)


@pytest.mark.parametrize("bad", [True, "0.5", None])
def test_bools_strings_refused_as_reals(mild_target, bad):
    g = gen()
    with pytest.raises(ConfigError, match="ess_threshold"):
        smc(mild_target, PROMPT, 4, ess_threshold=bad, generator=g)
    with pytest.raises(ConfigError, match="log_c"):
        quasi_rejection_sample(mild_target, PROMPT, 8, bad, generator=g)
