"""Calling conventions (issue 11 item 9): generator and options by keyword, configs built by keyword,
CTLConfig's fields in fit_twist_ctl's order, and the older resampler signature still served."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf import ppl
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.exact.posterior import ExactPosterior
from bayes_rlhf.models.causal_lm import CausalLM, sample_categorical
from bayes_rlhf.models.sampling import stratified_uniforms
from bayes_rlhf.samplers import (RESAMPLERS, SMC, CTLConfig, SMCConfig, WeightedSamples, best_of_n, fit_twist,
                                 fit_twist_ctl, get_resampler, importance_sample, lower_bound, quasi_rejection_sample,
                                 sampling_importance_resampling, smc, upper_bound)
from bayes_rlhf.samplers.importance import draw_proposals

PROMPT = "w1 w2"
PUBLIC = [importance_sample, sampling_importance_resampling, draw_proposals, best_of_n, quasi_rejection_sample,
          lower_bound, upper_bound, smc, fit_twist, fit_twist_ctl, SMC.step, SMC.run, WeightedSamples.resample,
          ppl.posterior_model, ppl.policy_guide, ppl.pyro_importance, ppl.elbo, ppl.fit_policy_svi,
          ppl.CompletionDistribution.__init__, *RESAMPLERS.values(), br.exact_rejection_sample, ExactPosterior.sample,
          CausalLM.sample, sample_categorical, stratified_uniforms]


@pytest.mark.parametrize("fn", PUBLIC, ids=lambda f: f.__qualname__)
def test_generator_is_keyword_only(fn):
    assert inspect.signature(fn).parameters["generator"].kind is inspect.Parameter.KEYWORD_ONLY


def test_options_are_keyword_only(mild_target):
    g = torch.Generator().manual_seed(0)
    with pytest.raises(TypeError):
        importance_sample(mild_target, PROMPT, 4, None, g)  # proposal and generator by position
    with pytest.raises(TypeError):
        smc(mild_target, PROMPT, 4, None)
    with pytest.raises(TypeError):
        SMCConfig(4, 0.5)
    with pytest.raises(TypeError):
        CTLConfig(10)
    assert SMCConfig(4, ess_threshold=0.25).ess_threshold == 0.25


def test_fit_twist_ctl_takes_ctlconfigs_fields_in_its_order():
    fields = [f.name for f in dataclasses.fields(CTLConfig)]
    params = [p for p in inspect.signature(fit_twist_ctl).parameters if p not in ("twist", "target", "prompts",
                                                                                  "generator")]
    assert params == fields
    for p in params:
        assert inspect.signature(fit_twist_ctl).parameters[p].default == getattr(CTLConfig(), p)


def test_an_older_resampler_still_works_with_a_deprecation_warning():
    lw = torch.tensor([0.0, -1.0, -0.5, -3.0], dtype=torch.float64)

    def old(generator, log_weights, n):  # the older signature (generator first)
        return RESAMPLERS["systematic"](log_weights, n, generator=generator)

    with pytest.warns(DeprecationWarning, match="num_samples"):
        wrapped = get_resampler(old)
    a = wrapped(lw, 6, generator=torch.Generator().manual_seed(3))
    b = RESAMPLERS["systematic"](lw, 6, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    new = lambda log_weights, num_samples, *, generator=None: torch.zeros(num_samples, dtype=torch.long)  # noqa: E731
    assert get_resampler(new) is new


def test_smc_with_an_older_resampler_equals_the_current_one(mild_target):
    import warnings

    def old(generator, log_weights, n):
        return RESAMPLERS["multinomial"](log_weights, n, generator=generator)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        a = smc(mild_target, PROMPT, 8, twist="prefix", ess_threshold=1.0, resampling=old,
                generator=torch.Generator().manual_seed(4))
    b = smc(mild_target, PROMPT, 8, twist="prefix", ess_threshold=1.0, resampling="multinomial",
            generator=torch.Generator().manual_seed(4))
    assert b.info["resampling_steps"] > 0  # the resampler was called
    assert torch.equal(a.ids, b.ids) and torch.equal(a.log_z, b.log_z)


def test_exact_rejection_sample_counts_by_num_samples_and_n_is_deprecated(mild_target):
    g = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    new = br.exact_rejection_sample(mild_target, PROMPT, num_samples=5, reward_max=6.0, generator=g())
    with pytest.warns(DeprecationWarning, match="num_samples"):
        old = br.exact_rejection_sample(mild_target, PROMPT, n=5, reward_max=6.0, generator=g())
    assert torch.equal(new.samples.ids, old.samples.ids) and len(new.samples) == 5
    with pytest.raises(ConfigError, match="num_samples= only"):
        br.exact_rejection_sample(mild_target, PROMPT, n=5, num_samples=5, reward_max=6.0, generator=g())
    with pytest.warns(DeprecationWarning, match="generator=..."):  # DESIGN.md's older documented call
        positional = br.exact_rejection_sample(mild_target, PROMPT, 5, 6.0, g())
    assert torch.equal(new.samples.ids, positional.samples.ids)
    with pytest.raises(TypeError):  # only a generator (or None) is taken by position
        br.exact_rejection_sample(mild_target, PROMPT, 5, 6.0, 256)


def test_exact_posterior_sample_takes_the_older_positional_generator(mild_post):
    new = mild_post.sample(6, generator=torch.Generator().manual_seed(5))
    with pytest.warns(DeprecationWarning, match="generator=..."):
        old = mild_post.sample(6, torch.Generator().manual_seed(5))
    assert torch.equal(new.ids, old.ids)
    with pytest.raises(TypeError):
        mild_post.sample(6, 7)
