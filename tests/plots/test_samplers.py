"""plot_log_z and plot_weight_diagnostics (plots/samplers.py) from real importance-sampling estimates:
ticks at the particle counts, bars cut at the axis marked, text in the PDF that is text."""

from __future__ import annotations

import math

import pytest
import torch
from figure_checks import assert_human_legend, assert_inside_limits, assert_pdf_text, assert_ticks_apart, axis_labels

from bayes_rlhf.diagnostics.sampled import importance_log_z
from bayes_rlhf.diagnostics.weights import weight_diagnostics
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.plots import plot_log_z, plot_weight_diagnostics, save_figure


def _prior_draws(post, n, seed):
    g = torch.Generator().manual_seed(seed)
    rows = torch.multinomial(post.prior_log_probs.exp(), n, replacement=True, generator=g)
    return post.prior_log_probs[rows], post.prior_log_probs[rows], post.rewards[rows]


def test_log_z(gpt2_post, tmp_path):
    post = gpt2_post
    ns = [10, 100, 1000]
    ests = [importance_log_z(*_prior_draws(post, n, seed=n), post.beta) for n in ns]
    fig = plot_log_z(ns, {"importance sampling": [e.value for e in ests]},
                     stderrs={"importance sampling": [2 * e.stderr for e in ests]}, exact_log_z=post.log_z)
    assert "nats" in axis_labels(fig)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["10", "100", "1000"]  # ticks at the counts
    reps = torch.tensor([[importance_log_z(*_prior_draws(post, n, seed=n + s), post.beta).value
                          for s in range(3)] for n in ns])
    fig = plot_log_z(ns, {"repeats": reps}, exact_log_z=post.log_z)
    assert_inside_limits(fig)
    assert_human_legend(fig)
    assert_ticks_apart(fig)


def test_weight_diagnostics_cut_bars_are_marked(gpt2_post, tmp_path):
    post = gpt2_post
    diags = [weight_diagnostics(post.rewards[r] / post.beta) for r in (torch.arange(100), torch.arange(1000))]
    labels = [f"importance, prompt {i}" for i in range(6)]
    khat = [diags[0].khat, -4.31, -math.inf, math.nan, 0.8, 1.7]
    fig = plot_weight_diagnostics(labels, [diags[0].ess_fraction, 0.6, 1.0, 0.2, 0.1, 0.05], khat)
    assert_inside_limits(fig)  # the k-hat axis reaches 1.7: no bar cut above
    assert_ticks_apart(fig)  # six long labels, horizontal bars: none collide
    notes = [t.get_text() for t in fig.axes[1].texts]
    assert "$\\hat k$ = −4.31" in notes and "$\\hat k$ = −∞" in notes and "n/a" in notes
    assert "cut" in fig.axes[1].get_xlabel()
    assert [b.get_alpha() for b in fig.axes[1].patches][:3] == [None, 0.35, 0.35]  # cut bars drawn pale
    save_figure(fig, tmp_path / "weights.png")  # a suffix is replaced by both formats
    assert (tmp_path / "weights.pdf").stat().st_size > 0 and (tmp_path / "weights.png").stat().st_size > 0
    assert_pdf_text(tmp_path / "weights.pdf", ["Kish ESS / n", "importance, prompt 5", "cut"])
    with pytest.raises(ConfigError):
        plot_weight_diagnostics(["a"], [0.5, 0.5], [0.1])
