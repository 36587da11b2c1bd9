"""Stratified token draws in SMC (``SMCConfig.stratify``): particles sharing a prefix draw from strata
of one CDF; each draw keeps its distribution, so Z_hat stays unbiased, with less variance."""

from __future__ import annotations

import math

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.models.sampling import sample_categorical, stratified_uniforms
from bayes_rlhf.samplers import LocallyConstrained, SMCConfig, TokenMask, smc
from tests.conftest import first_word_reward
from tests.samplers.test_constrained import PROMPT, _forbidden


def test_each_group_of_m_rows_gets_one_uniform_in_each_of_m_strata():
    keys = torch.tensor([[0, 5], [1, 2], [0, 5], [1, 2], [7, 7], [0, 5], [1, 2], [1, 2], [0, 5], [0, 5]])
    u = stratified_uniforms(keys, generator=torch.Generator().manual_seed(0))
    assert u.dtype == torch.float64 and bool(((u >= 0) & (u < 1)).all())
    for key, m in (([0, 5], 5), ([1, 2], 4), ([7, 7], 1)):
        rows = (keys == torch.tensor(key)).all(-1)
        assert sorted(torch.floor(u[rows] * m).long().tolist()) == list(range(m))


def test_each_row_is_marginally_uniform():
    # 4000 draws for the first row of a group of 4: each stratum 1000 times in expectation (SD 27),
    # the mean 0.5 (SD 0.0046); bounds at about 4 SD
    keys = torch.zeros((4, 1), dtype=torch.long)
    g = torch.Generator().manual_seed(1)
    first = torch.stack([stratified_uniforms(keys, generator=g)[0] for _ in range(4000)])
    counts = torch.bincount(torch.floor(first * 4).long(), minlength=4)
    assert bool(((counts - 1000).abs() < 110).all()), counts
    assert abs(float(first.mean()) - 0.5) < 0.02


def test_stratified_draws_of_one_categorical_count_each_token_within_two_of_m_p():
    # stratified draws of one categorical: the count of a token of probability p among m rows
    # differs from m p by less than 2 (it covers an interval of m p strata, cut at both ends)
    p = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    for _ in range(200):
        u = stratified_uniforms(torch.zeros((10, 1), dtype=torch.long), generator=g)
        tok = sample_categorical(p.log().expand(10, -1), uniforms=u)
        assert bool(((torch.bincount(tok, minlength=4) - 10 * p).abs() < 2).all())


@pytest.fixture(scope="module")
def lipogram(gpt2_lm):
    """The lipogram alone (r = 0 or -inf): with the constrained proposal the weights are products of
    allowed masses, in [0, 1], so their sample variance is a steady statistic."""
    mask = TokenMask(_forbidden())
    target = br.Target(prior=gpt2_lm, reward=mask.reward(), beta=1.0, max_new_tokens=4)
    return target, mask, br.exact_posterior(target, PROMPT)


def _z(ws, post):
    z = torch.exp(ws.log_z - post.log_z)
    return z, float(z.mean()), float(z.std() / math.sqrt(z.numel()))


@pytest.mark.slow
def test_stratified_smc_is_unbiased_with_less_variance(lipogram):
    # R = 2000 runs of N = 4 each way against the exact Z; mean Z_hat / Z is 1 within 4 SE. Var(Z_hat / Z)
    # measured with seeds 1-3: 0.0160-0.0165 stratified against 0.0211-0.0225 independent (ratio
    # 0.73-0.76; N = 8: 0.71-0.75). The weights are bounded, so the sample variances' relative SE is about
    # 3% each: < 0.9 x holds with margin.
    target, mask, post = lipogram
    var = {}
    for stratify in (False, True):
        ws = smc(target, [PROMPT] * 2000, 4, proposal=LocallyConstrained(mask), stratify=stratify,
                 generator=torch.Generator().manual_seed(1))
        z, mean, se = _z(ws, post)
        assert abs(mean - 1) < 4 * se, (stratify, mean, se)
        var[stratify] = float(z.var())
    assert var[True] < 0.9 * var[False], var


@pytest.mark.parametrize("twist", [None, "prefix"])
def test_stratified_bootstrap_smc_is_unbiased(mild_target, mild_post, twist):
    # heavy-tailed weights (a few completions carry most of Z): only the mean is checked, 4 SE
    ws = smc(mild_target, [PROMPT] * 400, 8, twist=twist, ess_threshold=1.0, generator=torch.Generator().manual_seed(4))
    _, mean, se = _z(ws, mild_post)
    assert se < 0.08 and abs(mean - 1) < 4 * se, (mean, se)


def test_stratify_must_be_a_bool(lipogram):
    with pytest.raises(ConfigError, match="stratify"):
        SMCConfig(4, stratify=1)
    with pytest.raises(ConfigError, match="stratify"):
        smc(lipogram[0], PROMPT, 4, stratify="yes")
