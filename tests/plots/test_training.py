"""plot_training and plot_training_panels (plots/training.py) from a run that moves q from the prior to
the posterior: exact and per-batch series apart, evaluated steps as dots, every point inside its axes."""

from __future__ import annotations

import math

import pytest
import torch
from figure_checks import assert_human_legend, assert_inside_limits, assert_pdf_text, axis_labels, drawn_axes

import bayes_rlhf as br
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.plots import plot_training, plot_training_panels, save_figure


def _tempered(post, a):
    return torch.log_softmax((1 - a) * post.prior_log_probs + a * post.log_probs, 0)


def test_training_curve(gpt2_post):
    post = gpt2_post
    # a "training run" moving q from the prior to the posterior: q_a ∝ pi0^(1-a) pi*^a
    steps = list(range(6))
    kls = [br.compare(_tempered(post, a), post).kl_q_posterior for a in torch.linspace(0, 1, 6).tolist()]
    fig = plot_training(steps, {"exact KL(q || pi*)": kls}, references={"optimum": 0.0})
    assert "nats" in axis_labels(fig)
    assert_inside_limits(fig)
    with pytest.raises(ConfigError, match="values for"):
        plot_training(steps, {"bad": kls[:3]})


def test_training_panels_keep_exact_and_noisy_apart(gpt2_post, tmp_path):
    post = gpt2_post
    steps = list(range(1, 11))
    exact = [br.compare(_tempered(post, s / 10), post).kl_q_posterior if s % 3 == 0 else math.nan for s in steps]
    noisy = (torch.tensor([br.compare(_tempered(post, s / 10), post).kl_q_prior for s in steps])
             + 0.05 * torch.randn(10, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    fig = plot_training_panels(steps, [("Distance to the posterior", "KL [nats]", {"KL(q || pi*), exact": exact}),
                                       ("KL to the prior (per-batch estimate)", "KL [nats]",
                                        {"KL(q || pi0), one batch": noisy}), ("empty", "", {})])
    a1, a2 = drawn_axes(fig)  # the empty panel is dropped
    assert [line.get_label() for line in a1.lines] == ["KL(q || pi*), exact"]
    assert len(a1.lines[0].get_xdata()) == 3 and a1.lines[0].get_marker() == "o"  # evaluated steps, as dots
    assert [line.get_label() for line in a2.lines] == ["KL(q || pi0), one batch"]
    assert_inside_limits(fig)
    assert_human_legend(fig)
    pdf, _ = save_figure(fig, tmp_path / "training")
    assert_pdf_text(pdf, ["Distance to the posterior", "per-batch estimate", "training step"])
    with pytest.raises(ConfigError, match="no training series"):
        plot_training_panels(steps, [("a", "b", {})])
