"""Every plot function draws a figure from real results; save_figure writes PDF and PNG."""

from __future__ import annotations

import pytest
import torch
from matplotlib.figure import Figure

import bayes_rlhf as br
from bayes_rlhf.diagnostics.frontier import best_of_n_points, policy_point, posterior_frontier
from bayes_rlhf.diagnostics.sampled import importance_log_z
from bayes_rlhf.diagnostics.weights import weight_diagnostics
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.plots import (plot_frontier, plot_log_z, plot_reward_histograms, plot_token_distributions,
                              plot_training, plot_weight_diagnostics, save_figure)


def _labels(fig: Figure) -> str:
    return " ".join(ax.get_xlabel() + " " + ax.get_ylabel() for ax in fig.axes)


def test_frontier(gpt2_post, tmp_path):
    post = gpt2_post
    pts = posterior_frontier(post, [0.2, 0.5, 1, 2, 5]) + [policy_point(post.prior_log_probs, post, "prior")]
    pts += best_of_n_points(post, [1, 2], log_probs_fn=lambda p, n: p.prior_log_probs)
    fig = plot_frontier(pts)
    assert "nats" in _labels(fig)
    pdf, png = save_figure(fig, tmp_path / "frontier")
    assert pdf.read_bytes()[:4] == b"%PDF" and png.read_bytes()[:4] == b"\x89PNG"


def _prior_draws(post, n, seed):
    g = torch.Generator().manual_seed(seed)
    rows = torch.multinomial(post.prior_log_probs.exp(), n, replacement=True, generator=g)
    return post.prior_log_probs[rows], post.prior_log_probs[rows], post.rewards[rows]


def test_log_z_and_weights(gpt2_post, tmp_path):
    post = gpt2_post
    ns = [10, 100, 1000]
    ests = [importance_log_z(*_prior_draws(post, n, seed=n), post.beta) for n in ns]
    fig = plot_log_z(ns, {"importance sampling": [e.value for e in ests]},
                     stderrs={"importance sampling": [2 * e.stderr for e in ests]}, exact_log_z=post.log_z)
    assert "nats" in _labels(fig)
    reps = torch.tensor([[importance_log_z(*_prior_draws(post, n, seed=n + s), post.beta).value
                          for s in range(3)] for n in ns])
    plot_log_z(ns, {"repeats": reps})
    diags = [weight_diagnostics(post.rewards[r] / post.beta) for r in (torch.arange(100), torch.arange(1000))]
    fig = plot_weight_diagnostics(["n=100", "n=1000"], [d.ess_fraction for d in diags], [d.khat for d in diags])
    save_figure(fig, tmp_path / "weights.png")  # a suffix is replaced by both formats
    assert (tmp_path / "weights.pdf").stat().st_size > 0 and (tmp_path / "weights.png").stat().st_size > 0


def test_training_curve(gpt2_post):
    post = gpt2_post
    # a "training run" moving q from the prior to the posterior: q_a ∝ pi0^(1-a) pi*^a
    steps = list(range(6))
    kls = [br.compare(torch.log_softmax((1 - a) * post.prior_log_probs + a * post.log_probs, 0), post).kl_q_posterior
           for a in torch.linspace(0, 1, 6).tolist()]
    fig = plot_training(steps, {"exact KL(q || pi*)": kls}, references={"optimum": 0.0})
    assert "nats" in _labels(fig)
    with pytest.raises(ConfigError, match="values for"):
        plot_training(steps, {"bad": kls[:3]})


def test_token_distributions_and_rewards(gpt2_post, gpt2_lm):
    post = gpt2_post
    _, logp = gpt2_lm.start(post.prompt)
    tokens = gpt2_lm.tokenizer.convert_ids_to_tokens(list(range(gpt2_lm.vocab_size)))
    fig = plot_token_distributions(tokens, {"posterior": post.token_posterior([]), "prior": logp[0].exp()},
                                   prefix=post.prompt)
    assert "probability" in _labels(fig)
    fig = plot_reward_histograms({"prior": (post.rewards, post.prior_log_probs.exp()),
                                  "posterior": (post.rewards, post.probs),
                                  "draws": (post.rewards[:50], None)})
    assert "reward" in _labels(fig)


def test_bad_input(tmp_path):
    with pytest.raises(ConfigError):
        plot_frontier([])
    with pytest.raises(ConfigError):
        plot_token_distributions(["a", "b"], {"p": [1.0]})
    with pytest.raises(ConfigError):
        plot_weight_diagnostics(["a"], [0.5, 0.5], [0.1])
    with pytest.raises(ConfigError):
        save_figure("not a figure", tmp_path / "x")
