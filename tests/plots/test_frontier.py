"""plot_frontier (plots/frontier.py): the reward-KL frontier from real exact results, zoomed on its
markers, every marker inside its axes, legends in human names, text in the PDF that is text."""

from __future__ import annotations

import math

import pytest
import torch
from figure_checks import assert_human_legend, assert_inside_limits, assert_pdf_text, drawn_axes, legend_texts

from bayes_rlhf.diagnostics.frontier import FrontierPoint, best_of_n_points, policy_point, posterior_frontier
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.plots import plot_frontier, save_figure


def _frontier_points(post):
    """What the report draws: the curve to 30 nats, the prior, pi*, a policy at pi* and two samplers."""
    pts = posterior_frontier(post, torch.logspace(-1.3, 1.3, 25, dtype=torch.float64).tolist())
    pts.append(FrontierPoint("prior $\\pi_0$", "prior", 0.0, post.prior_mean_reward))
    pts.append(FrontierPoint("$\\pi^*$ at the run's $\\beta$", "target", post.kl_to_prior, post.mean_reward))
    near = torch.log_softmax(0.02 * post.prior_log_probs + 0.98 * post.log_probs, 0)  # almost pi*
    pts.append(policy_point(near, post, label="policy near pi-star"))
    pts += [FrontierPoint("smc (empirical)", "sampler", post.kl_to_prior + 0.3, post.mean_reward),
            FrontierPoint("importance (empirical)", "sampler", post.kl_to_prior + 0.31, post.mean_reward + 0.01)]
    return pts + best_of_n_points(post, [1, 2, 4])


def test_frontier_zooms_on_the_markers(gpt2_post, tmp_path):
    post = gpt2_post
    pts = _frontier_points(post)
    fig = plot_frontier(pts)
    main, overview = drawn_axes(fig)
    marked = [p.kl for p in pts if p.kind != "posterior"]
    curve = max(p.kl for p in pts if p.kind == "posterior")
    assert curve > 3 * max(marked)  # the case of the report: the curve runs far beyond every marker
    assert main.get_xlim()[1] <= 1.5 * max(marked) < overview.get_xlim()[1] and overview.get_xlim()[1] >= curve
    assert assert_inside_limits(fig) == 2 * len(marked) + 5  # every marker in both panels, and the zoom box
    by_label = {line.get_label(): line for line in main.lines}
    ring, star = by_label["$\\pi^*$ at the run's $\\beta$"], by_label["policy near pi-star"]
    assert ring.get_zorder() > star.get_zorder() and ring.get_markerfacecolor() == "none"  # star shows inside
    assert ring.get_markersize() > star.get_markersize()
    smc, imp = by_label["smc (empirical)"], by_label["importance (empirical)"]
    assert smc.get_marker() != imp.get_marker() and smc.get_markerfacecolor() == "none"  # overlap stays legible
    assert_human_legend(fig)
    pdf, png = save_figure(fig, tmp_path / "frontier")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert_pdf_text(pdf, ["Reward-KL frontier", "expected reward", "best-of-N", "policy near pi-star", "nats"])


def test_frontier_without_far_curve_is_one_panel(gpt2_post):
    post = gpt2_post
    pts = posterior_frontier(post, [post.beta, 2.0, 5.0]) + [policy_point(post.log_probs, post, "policy")]
    pts.append(FrontierPoint("infinite", "policy", math.inf, 0.0))  # left out, not drawn at the edge
    fig = plot_frontier(pts)
    assert len(drawn_axes(fig)) == 1 and "infinite" not in legend_texts(fig)
    assert_inside_limits(fig)
    with pytest.raises(ConfigError, match="infinite"):
        plot_frontier([FrontierPoint("x", "policy", math.inf, 0.0)])
