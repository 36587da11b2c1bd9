"""Every plot function draws a figure from real results that a reader can trust: each marker
inside its axes, legends in human names, tick labels apart, text in the PDF that is text."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from bpe_model import bpe_lm, word_id
from figure_checks import (assert_human_legend, assert_inside_limits, assert_pdf_text, assert_ticks_apart,
                           drawn_axes, legend_texts, pdf_text)
from matplotlib.figure import Figure

import bayes_rlhf as br
from bayes_rlhf.diagnostics.frontier import FrontierPoint, best_of_n_points, policy_point, posterior_frontier
from bayes_rlhf.diagnostics.sampled import importance_log_z
from bayes_rlhf.diagnostics.weights import weight_diagnostics
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.plots import (TokenLabels, plot_frontier, plot_log_z, plot_reward_histograms, plot_token_distributions,
                              plot_training, plot_training_panels, plot_weight_diagnostics, save_figure, token_label)


def _labels(fig: Figure) -> str:
    return " ".join(ax.get_xlabel() + " " + ax.get_ylabel() for ax in fig.axes)


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
    assert "nats" in _labels(fig)
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


def _tempered(post, a):
    return torch.log_softmax((1 - a) * post.prior_log_probs + a * post.log_probs, 0)


def test_training_curve(gpt2_post):
    post = gpt2_post
    # a "training run" moving q from the prior to the posterior: q_a ∝ pi0^(1-a) pi*^a
    steps = list(range(6))
    kls = [br.compare(_tempered(post, a), post).kl_q_posterior for a in torch.linspace(0, 1, 6).tolist()]
    fig = plot_training(steps, {"exact KL(q || pi*)": kls}, references={"optimum": 0.0})
    assert "nats" in _labels(fig)
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


def test_token_distributions_and_rewards(gpt2_post, gpt2_lm, tmp_path):
    post = gpt2_post
    _, logp = gpt2_lm.start(post.prompt)
    tokens = TokenLabels(gpt2_lm.tokenizer, gpt2_lm.vocab_size)
    fig = plot_token_distributions(tokens, {"exact posterior $\\pi^*$": post.token_posterior([]),
                                            "prior $\\pi_0$": logp[0].exp()}, prefix="w1")
    assert "probability" in _labels(fig) and fig.axes[0].get_title() == "Next token after “w1”"
    assert_inside_limits(fig)
    assert_human_legend(fig)
    assert_ticks_apart(fig)
    fig = plot_reward_histograms({"prior $\\pi_0$": (post.rewards, post.prior_log_probs.exp()),
                                  "exact posterior $\\pi^*$": (post.rewards, post.probs),
                                  "draws": (post.rewards[:50], None)})
    assert "reward" in _labels(fig)
    assert_inside_limits(fig)
    assert_ticks_apart(fig)
    # one bar per shown reward value and series, centred by series; heights the exact probabilities
    levels = torch.unique(post.rewards)
    prior_mass = {round(float(v), 9): float(post.prior_log_probs.exp()[post.rewards == v].sum()) for v in levels}
    bars = fig.axes[0].patches
    n_shown = len(bars) // 3
    assert 0 < n_shown <= len(levels)
    for b in bars[:n_shown]:  # the prior's bars sit one bar width left of each level
        level = round(b.get_x() + 1.5 * b.get_width(), 9)
        assert b.get_height() == pytest.approx(prior_mass[level], abs=1e-12)
    assert sum(b.get_height() for b in bars[:n_shown]) == pytest.approx(1.0, abs=1e-3 * len(levels))
    pdf, _ = save_figure(fig, tmp_path / "rewards")
    assert_pdf_text(pdf, ["Reward distribution", "reward r(x)", "draws"])
    fig = plot_reward_histograms({"draws": (torch.randn(500, generator=torch.Generator().manual_seed(1)), None)})
    assert fig.axes[0].patches and assert_inside_limits(fig) > 0  # many distinct values: a step histogram


@pytest.fixture(scope="module")
def bpe():
    return bpe_lm()


def test_token_labels_of_byte_level_bpe(bpe):
    tok = bpe.tokenizer
    assert token_label(tok, word_id(tok, " a")) == "␣a" and token_label(tok, word_id(tok, " made")) == "␣made"
    assert token_label(tok, word_id(tok, " –")) == "␣–"  # three bytes, one character
    assert token_label(tok, 0) == "<|endoftext|>"
    piece = "fÃ"  # 'f' and the first byte of 'é'
    if piece in tok.get_vocab():
        assert token_label(tok, tok.get_vocab()[piece]) == "f<0xC3>"
    labels = TokenLabels(tok, bpe.vocab_size)
    assert len(labels) == bpe.vocab_size and labels[word_id(tok, " cake")] == "␣cake"
    assert all("Ġ" not in labels[i] for i in range(bpe.vocab_size))
    with pytest.raises(IndexError):
        labels[bpe.vocab_size]


def test_token_bars_drop_empty_tokens_and_pool_the_rest(bpe, tmp_path):
    tok, V = bpe.tokenizer, bpe.vocab_size
    ids = {w: word_id(tok, w) for w in (" a", " made", " cake", " –")}
    post = torch.zeros(V, dtype=torch.float64)
    post[[ids[" a"], ids[" made"], ids[" cake"], ids[" –"]]] = torch.tensor([0.5, 0.3, 0.15, 0.05],
                                                                            dtype=torch.float64)
    prior = torch.full((V,), 0.0, dtype=torch.float64)
    prior[[ids[" a"], ids[" made"], ids[" cake"]]] = torch.tensor([0.6, 0.2, 0.1], dtype=torch.float64)
    prior[0] = 0.1  # EOS has mass under the prior only
    dists = {"exact posterior $\\pi^*$": post, "prior $\\pi_0$": prior}
    fig = plot_token_distributions(TokenLabels(tok, V), dists)
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == ["␣a", "␣made", "␣cake", "␣–", "<|endoftext|>"]  # zero-mass tokens dropped, order by pi*
    assert fig.axes[0].get_title() == "First token of the completion"
    fig = plot_token_distributions(TokenLabels(tok, V), dists, top=2)
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == ["␣a", "␣made", "other (287)"]
    bars = fig.axes[0].patches
    assert bars[2].get_height() == pytest.approx(0.2) and bars[5].get_height() == pytest.approx(0.2)  # pooled mass
    assert bars[2].get_hatch() == "//"
    assert_inside_limits(fig)
    assert_ticks_apart(fig)
    pdf, _ = save_figure(fig, tmp_path / "tokens")
    assert_pdf_text(pdf, ["␣a", "␣made", "other (287)", "First token"])
    with pytest.raises(ConfigError):
        plot_token_distributions(["a", "b"], {"p": [1.0]})


def test_bad_input(tmp_path):
    with pytest.raises(ConfigError):
        plot_frontier([])
    with pytest.raises(ConfigError):
        plot_token_distributions(["a", "b"], {})
    with pytest.raises(ConfigError):
        save_figure("not a figure", tmp_path / "x")


def test_legend_checks_catch_column_names():
    fig = plot_training([0, 1], {"kl_prior": [0.0, 1.0]})
    with pytest.raises(AssertionError, match="column name"):
        assert_human_legend(fig)
    fig = plot_training([0, 1, 2, 3, 4], {"x": [0.0, math.nan, math.nan, math.nan, 1.0]})  # sparse: markers
    assert assert_inside_limits(fig) == 2
    fig.axes[0].set_ylim(0.2, 0.8)
    with pytest.raises(AssertionError):
        assert_inside_limits(fig)
    assert np.isfinite(fig.axes[0].get_ylim()).all()


@pytest.mark.slow
def test_report_figures_for_a_subword_vocabulary(bpe, tmp_path):
    from bayes_rlhf.diagnostics.run_dir import save_run
    from bayes_rlhf.report import write_report

    tok = bpe.tokenizer
    cake = word_id(tok, " cake")
    reward = br.TokenReward(lambda ids, mask: ((ids == cake) & mask).sum(-1).double(), name="cakes")
    post = br.exact_posterior(br.Target(bpe, reward, 1.0, 2), "she")
    save_run(tmp_path / "run", [post], policies={"tempered": [torch.log_softmax(0.5 * post.log_probs, 0)]})
    page = write_report(tmp_path / "run", betas=[0.5, 1.0, 2.0], best_of_n=None, embed_figures=False)
    text = page.read_text(encoding="utf-8")
    assert "Spaces are shown as ␣" in text and '<td class="t m"> a cake</td>' in text  # the space kept
    figures = tmp_path / "run" / "figures"
    for name in ("tokens_0_0.pdf", "tokens_0_1.pdf"):
        if assert_pdf_text(figures / name, ["␣a", "␣made", "␣cake"]):
            data = pdf_text(figures / name)
            assert "Ġ" not in data and "!" not in data  # no raw piece; '!' (mass 1e-15) is not drawn

