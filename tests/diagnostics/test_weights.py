"""Kish ESS and PSIS k-hat: exact small cases, known tail indices, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from bayes_rlhf.diagnostics.weights import (MIN_PSIS_SAMPLES, EmptySamplesError, khat_label, kish_ess,
                                            normalized_weights, psis_khat, weight_diagnostics)
from bayes_rlhf.errors import ConfigError, NoMassError


def test_kish_ess_exact_values():
    assert kish_ess(torch.zeros(10)) == pytest.approx(10.0)
    assert kish_ess(torch.tensor([0.0, -math.inf, -math.inf])) == pytest.approx(1.0)
    # weights 1, 1, 2: (sum w)^2 / sum w^2 = 16 / 6
    assert kish_ess(torch.log(torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64))) == pytest.approx(16 / 6)
    # invariant to a constant shift of the log-weights (no overflow at +700)
    assert kish_ess(torch.log(torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64)) + 700.0) == pytest.approx(16 / 6)
    assert float(normalized_weights(torch.tensor([0.0, math.log(3.0)])).sum()) == pytest.approx(1.0)


def _beta_uniform_log_weights(k: float, n: int, seed: int) -> torch.Tensor:
    """Target Beta(1 - k, 1) (density prop. to x^-k), proposal Uniform(0, 1): lw = -k log U.

    The weights U^-k are exactly Pareto with shape k, so the true k-hat is k.
    """
    g = torch.Generator().manual_seed(seed)
    return -k * torch.log(torch.rand(n, generator=g, dtype=torch.float64))


@pytest.mark.slow
def test_khat_separates_good_and_poor_proposals():
    # Known cases: k = 0.2 (good proposal) and k = 0.95 (poor: target Beta(0.05, 1) piles up
    # near 0 where the uniform proposal rarely goes). PSIS fits the largest M = 3 sqrt(n) = 671
    # weights; the k-hat sd is about (1 + k) / sqrt(M): 0.046 and 0.075, so the thresholds
    # 0.5 and 0.7 are 6.5 and 3.3 sd away (and seeds 0-7 gave 0.16-0.26 and 0.86-1.04).
    _, k_good = psis_khat(_beta_uniform_log_weights(0.2, 50_000, seed=0))
    _, k_poor = psis_khat(_beta_uniform_log_weights(0.95, 50_000, seed=0))
    assert k_good < 0.5 < 0.7 < k_poor
    assert abs(k_good - 0.2) < 4 * 1.2 / math.sqrt(671)
    assert khat_label(k_good) == "good" and khat_label(k_poor) in ("bad", "very bad")
    d_good = weight_diagnostics(_beta_uniform_log_weights(0.2, 50_000, 1))
    d_poor = weight_diagnostics(_beta_uniform_log_weights(0.95, 50_000, 1))
    # exact ESS fraction (E w)^2 / E w^2 = (1 - 2k) / (1 - k)^2 = 0.9375 for k = 0.2
    assert d_good.ess_fraction == pytest.approx(0.9375, abs=0.02)
    assert d_poor.ess_fraction < 0.1


def test_khat_on_lm_proposals(gpt2_post):
    # Posterior draws weighted against the posterior itself have constant weights (k-hat well
    # below 0.5, ESS = n); the prior as a proposal for a sharply tilted posterior (beta = 0.1)
    # puts tiny mass where pi* lives: its weights are dominated by a few draws.
    from bayes_rlhf.diagnostics.frontier import retilt

    sharp = retilt(gpt2_post, 0.1)
    g = torch.Generator().manual_seed(0)
    rows = torch.multinomial(sharp.prior_log_probs.exp(), 2000, replacement=True, generator=g)
    lw_poor = sharp.log_probs[rows] - sharp.prior_log_probs[rows]
    rows = torch.multinomial(sharp.probs, 2000, replacement=True, generator=g)
    d_exact = weight_diagnostics(sharp.log_probs[rows] - sharp.log_probs[rows])
    d_poor = weight_diagnostics(lw_poor)
    assert d_exact.ess == pytest.approx(2000) and d_exact.khat == -math.inf and d_exact.khat_label == "good"
    assert d_poor.khat > 0.7 and d_poor.ess_fraction < 0.05


def test_khat_of_tied_bounded_weights():
    # A reward with three values under the prior: the largest weight exp(1) is drawn by 30% of
    # the draws, more than psislw's tail (20%), so the tail is a point mass: bounded -> -inf, good.
    # (arviz alone says inf, "very bad", for these and for the equal weights of exact samples.)
    g = torch.Generator().manual_seed(0)
    r = torch.multinomial(torch.tensor([0.3, 0.4, 0.3]), 400, replacement=True, generator=g).double() - 1.0
    _, k = psis_khat(r)
    assert k == -math.inf and khat_label(k) == "good"
    # A few large ties above a tied body: 3 draws at weight e^10 over 397 at 1 cannot be judged.
    lw = torch.zeros(400, dtype=torch.float64)
    lw[:3] = 10.0
    _, k = psis_khat(lw)
    assert math.isnan(k) and khat_label(k) == "unknown"
    # Continuous weights at the smallest allowed n still get a finite fit (no tie fallback).
    _, k = psis_khat(_beta_uniform_log_weights(0.2, MIN_PSIS_SAMPLES, seed=1))
    assert math.isfinite(k)


@pytest.mark.parametrize("seed", [1, 2])
def test_khat_of_weights_equal_up_to_rounding(seed):
    # The README's zero-variance SMC (twisted by the exact soft values) on the float32 default
    # model: its log-weights differ by ~2e-6 (float32 rounding); arviz fitted a Pareto tail to
    # that noise, k = 9.4 and 12.1 for these seeds, "very bad".
    import bayes_rlhf as br

    lm, reward = br.default_model()
    target = br.Target(prior=lm, reward=reward, beta=1.0, max_new_tokens=4)
    post = br.exact_posterior(target, "the movie was")
    ws = br.smc(target, "the movie was", 256, proposal=post, twist=post,
                generator=torch.Generator().manual_seed(seed))
    assert 0 < float(ws.log_weights.max() - ws.log_weights.min()) < 1e-5
    d = weight_diagnostics(ws.log_weights)
    assert d.khat == -math.inf and d.khat_label == "good" and d.ess == pytest.approx(256)
    # a spread above the tolerance is still fitted, not called equal
    g = torch.Generator().manual_seed(seed)
    _, k = psis_khat(1e-3 * torch.randn(256, generator=g, dtype=torch.float64))
    assert math.isfinite(k)


def test_khat_nan_with_too_few_samples():
    lw, k = psis_khat(torch.zeros(MIN_PSIS_SAMPLES - 1))
    assert math.isnan(k) and khat_label(k) == "unknown"
    assert float(lw.exp().sum()) == pytest.approx(1.0)


def test_bad_input():
    with pytest.raises(EmptySamplesError):
        kish_ess(torch.zeros(0))
    with pytest.raises(EmptySamplesError):
        weight_diagnostics([])
    with pytest.raises(ConfigError, match="NaN"):
        kish_ess(torch.tensor([0.0, float("nan")]))
    with pytest.raises(NoMassError):
        weight_diagnostics(torch.full((5,), -math.inf))


def test_log_weights_from_a_list_keep_float64_and_one_dimension():
    # a list of floats was read as float32 (log Z off by ~1e-6); a 2-d array was flattened silently
    import math

    import bayes_rlhf as br
    from bayes_rlhf.errors import ConfigError

    lw = [0.1234567891234, -1.9876543210987, 0.5555555555555]
    want = math.log(sum(math.exp(x) for x in lw) / 3)
    assert abs(br.weight_diagnostics(lw).log_z - want) < 1e-14
    with pytest.raises(ConfigError, match="1-d"):
        br.weight_diagnostics([[0.0, 1.0], [2.0, 3.0]])


def test_khat_label_reads_the_sample_size():
    # the reliable range is k < min(1 - 1/log10(n), 0.7): 0.29 at n = 25, 0.7 from n = 2154 on
    assert khat_label(0.4) == "good" and khat_label(0.4, 10_000) == "good"
    assert khat_label(0.4, 25) == "bad" and khat_label(0.6, 100) == "bad" and khat_label(0.6, 10_000) == "ok"
    assert khat_label(-math.inf, 25) == "good" and khat_label(1.2, 10_000) == "very bad"
