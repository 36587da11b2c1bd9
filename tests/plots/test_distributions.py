"""plot_token_distributions, plot_reward_histograms and the token labels (plots/distributions.py), on the
tiny GPT-2 and on a byte-level BPE vocabulary: bars at the exact probabilities, readable token labels."""

from __future__ import annotations

import pytest
import torch
from bpe_model import word_id
from figure_checks import (assert_human_legend, assert_inside_limits, assert_pdf_text, assert_ticks_apart, axis_labels,
                           pdf_text)

import bayes_rlhf as br
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.plots import TokenLabels, plot_reward_histograms, plot_token_distributions, save_figure, token_label


def test_token_distributions_and_rewards(gpt2_post, gpt2_lm, tmp_path):
    post = gpt2_post
    _, logp = gpt2_lm.start(post.prompt)
    tokens = TokenLabels(gpt2_lm.tokenizer, gpt2_lm.vocab_size)
    fig = plot_token_distributions(tokens, {"exact posterior $\\pi^*$": post.token_posterior([]),
                                            "prior $\\pi_0$": logp[0].exp()}, prefix="w1")
    assert "probability" in axis_labels(fig) and fig.axes[0].get_title() == "Next token after “w1”"
    assert_inside_limits(fig)
    assert_human_legend(fig)
    assert_ticks_apart(fig)
    fig = plot_reward_histograms({"prior $\\pi_0$": (post.rewards, post.prior_log_probs.exp()),
                                  "exact posterior $\\pi^*$": (post.rewards, post.probs),
                                  "draws": (post.rewards[:50], None)})
    assert "reward" in axis_labels(fig)
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
