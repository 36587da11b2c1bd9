"""The shared command-line arguments (commands/_common.py): bad numbers refused at parsing."""

from __future__ import annotations

import pytest

from bayes_rlhf import cli
from bayes_rlhf.models import causal_lm


@pytest.mark.parametrize("argv, flag", [
    (["exact", "--beta", "-1"], "--beta"),
    (["exact", "--beta", "0"], "--beta"),
    (["exact", "--beta", "nan"], "--beta"),
    (["demo", "--beta", "-0.5"], "--beta"),
    (["evaluate", "--policy", "p", "--beta", "-1"], "--beta"),
    (["exact", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["exact", "--top-k", "0"], "--top-k"),
])
def test_a_bad_number_is_refused_before_the_model_loads(argv, flag, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the argument was checked")

    monkeypatch.setattr(causal_lm, "load_model", no_load)
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: must be" in err and argv[-1] in err
    assert list(tmp_path.iterdir()) == []


def test_good_numbers_parse_to_their_types():
    args = cli.build_parser().parse_args(["exact", "--beta", "0.5", "--max-new-tokens", "3", "--top-k", "8"])
    assert (args.beta, args.max_new_tokens, args.top_k) == (0.5, 3, 8)
    assert isinstance(args.max_new_tokens, int) and isinstance(args.top_k, int)


def test_posterior_summary_shows_tiny_masses_and_empty_completions(default):
    """A completion that is EOS at once reads as '' (empty), and a prior mass below 1e-4 is not printed
    as 0.0000 beside a large posterior one (a moment target can tilt it up by orders of magnitude)."""
    import bayes_rlhf as br
    from bayes_rlhf.commands._common import _probability, format_posterior

    assert [_probability(p) for p in (0.0, 0.0724, 1e-4, 1.5e-5)] == ["0.0000", "0.0724", "0.0001", " 2e-05"]
    lm, _ = default
    length = br.TokenReward(lambda ids, mask: -10.0 * mask.sum(-1).double(), name="short")
    post = br.exact_posterior(br.Target(lm, length, 1.0, 2), "the movie was")
    text = format_posterior(post, k=1)
    top = text.splitlines()[-1]  # the posterior's most probable: the shortest completion, EOS at once
    assert top.split()[:2] == ["''", "(empty)"], text
    prior_mass = float(post.prior_log_probs[post.log_probs.argmax()].exp())
    assert 0 < prior_mass < 1e-4 and top.split()[2] == _probability(prior_mass).strip() != "0.0000"


def test_help_wraps_prose_and_keeps_examples(monkeypatch):
    """Every subcommand's --help fits an 80-column terminal, except example lines (indented), which
    are kept exactly as written so that they can be copied."""
    from bayes_rlhf.cli import build_parser

    monkeypatch.setenv("COLUMNS", "80")
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    assert set(subparsers) == {"demo", "exact", "train", "evaluate", "report"}
    for name, sub in subparsers.items():
        text = sub.format_help()
        long = [line for line in text.splitlines() if len(line) > 80 and not line.startswith("  ")]
        assert not long, (name, long)
        for line in (sub.epilog or "").splitlines():
            if line.startswith("  "):
                assert line in text.splitlines(), (name, line)  # examples untouched


def test_commands_run_the_embedded_model_on_one_thread(monkeypatch, tmp_path):
    """exact, evaluate and train run on --threads torch threads: by default one for the embedded model
    (as the demo does: more only stall on a busy CPU), torch's own count for another; restored after."""
    import torch

    from bayes_rlhf import cli
    from bayes_rlhf.commands import evaluate, exact, train

    seen = []
    record = lambda *args, **kwargs: seen.append(torch.get_num_threads()) or 0  # noqa: E731
    monkeypatch.setattr(exact, "_run", record)
    monkeypatch.setattr(evaluate, "_run", record)
    monkeypatch.setattr(train, "train_from_config", lambda *a, **k: seen.append(torch.get_num_threads()) or {
        "final": {"objective": 0.0, "kl_prior": 0.0}, "steps": 0})
    config = tmp_path / "run.toml"
    config.write_text('[target]\nprompts = ["the movie was"]\n')
    other = tmp_path / "other.toml"
    other.write_text('[target]\nmodel = "some/model"\nprompts = ["a"]\n')
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for argv in (["exact"], ["exact", "--threads", "2"], ["exact", "--model", "m", "--prompt", "a"],
                     ["evaluate", "--policy", "p"], ["evaluate", "--policy", "p", "--threads", "2"],
                     ["train", "--config", str(config), "--out", str(tmp_path / "o")],
                     ["train", "--config", str(other), "--out", str(tmp_path / "o")]):
            assert cli.main(argv) == 0, argv
            assert torch.get_num_threads() == 2, argv
        assert seen == [1, 2, 2, 1, 2, 1, 2]
        assert cli.main(["train", "--config", str(tmp_path / "nope.toml")]) == 2  # the config's own error
    finally:
        torch.set_num_threads(before)


def test_commands_hide_transformers_bars_with_the_embedded_model_only(monkeypatch):
    # "Loading weights 28/28" bars broke up exact / evaluate / train output on the embedded model
    from transformers.utils import logging as hf_logging

    from bayes_rlhf import cli
    from bayes_rlhf.commands import exact

    seen = []
    monkeypatch.setattr(exact, "_run", lambda *a, **k: seen.append(hf_logging.is_progress_bar_enabled()) or 0)
    hf_logging.enable_progress_bar()
    for argv in (["exact"], ["exact", "--model", "some/model", "--prompt", "a"]):
        assert cli.main(argv) == 0
        assert hf_logging.is_progress_bar_enabled()  # restored
    assert seen == [False, True]  # a real model's loading bar stays: its loading can take a while


def test_completions_without_text_are_told_apart(default):
    # padding or BOS as a completion decodes to '' as EOS at once does: the summary names their tokens
    import bayes_rlhf as br
    from bayes_rlhf.commands._common import _textless

    lm, reward = default
    post = br.exact_posterior(br.Target(lm, reward, 1.0, 1), "the")
    empty = [i for i, t in enumerate(post.completions) if t == ""]
    shown = {_textless(post, i) for i in empty}
    assert len(shown) == len(empty) >= 2, shown  # EOS at once, and each special token of its own
    eos_row = next(i for i in empty if post.completion_ids[i, 0] == lm.eos_token_id)
    assert _textless(post, eos_row) == "'' (empty)"
    assert post.top(1)[0]["index"] == int(post.log_probs.argmax())  # top's rows name their table row
    assert post.top(1, by="prior")[0]["index"] == int(post.prior_log_probs.argmax())
