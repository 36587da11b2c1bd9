"""``bayes-rlhf evaluate``: bad input refused with typed errors, and a checkpoint compared end to end."""

from __future__ import annotations

import argparse

import pytest

import bayes_rlhf as br
from bayes_rlhf.commands import evaluate as evaluate_cmd
from bayes_rlhf.commands import report as report_cmd
from bayes_rlhf.errors import ConfigError, TokenizerMismatchError
from bayes_rlhf.models.toy import tiny_lm
from tests.saved_runs import check_report as _check_report


def _parser():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers()
    evaluate_cmd.register(sub)
    report_cmd.register(sub)
    return ap


def test_evaluate_rejects_bad_input(tmp_path, default):
    other = tmp_path / "other"
    tiny_lm("gpt2", vocab_size=8).save_pretrained(other)
    args = _parser().parse_args(["evaluate", "--policy", str(other), "--prompt", "the movie was"])
    with pytest.raises(TokenizerMismatchError, match="another tokenizer"):
        args.func(args)
    args = _parser().parse_args(["evaluate", "--policy", str(other), "--model", str(other)])
    with pytest.raises(ConfigError, match="--prompt"):
        args.func(args)


@pytest.mark.slow
def test_evaluate_end_to_end(tmp_path, default, capsys):
    lm, _ = default
    lm.save_pretrained(tmp_path / "policy")  # the prior itself as the "fine-tuned" policy
    args = _parser().parse_args(["evaluate", "--policy", str(tmp_path / "policy"), "--prompt", "the movie was",
                                 "--max-new-tokens", "2", "--out", str(tmp_path / "eval"), "--tsv"])
    assert args.func(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("q = the checkpoint as saved")  # which reading of q the table shows
    header, row = out[1].split("\t"), out[2].split("\t")
    values = dict(zip(header[1:], map(float, row[1:])))
    post = br.exact_posterior(br.Target(lm, default[1], 1.0, 2), "the movie was")
    assert values["kl_q_prior"] == pytest.approx(0.0, abs=1e-6)
    assert values["optimal_objective"] == pytest.approx(post.optimal_objective, rel=1e-5)
    assert values["mean_reward"] == pytest.approx(post.prior_mean_reward, abs=1e-5)
    _check_report(tmp_path / "eval" / "report.html", min_figures=3)  # frontier, rewards, first token


def _columns(line: str) -> list[tuple[int, int]]:
    """(start, end) of each cell of an aligned line: cells are two or more spaces apart."""
    import re

    return [m.span() for m in re.finditer(r"\S+(?: \S+)*", line)]


def test_evaluate_prints_an_aligned_table_of_the_tsv_values(tmp_path, default, capsys):
    lm, _ = default
    lm.save_pretrained(tmp_path / "policy")
    common = ["evaluate", "--policy", str(tmp_path / "policy"), "--prompt", "the movie was", "--prompt", "",
              "--max-new-tokens", "2"]
    tsv = _parser().parse_args([*common, "--tsv"])
    assert tsv.func(tsv) == 0
    reading, header, *rows = capsys.readouterr().out.strip().splitlines()
    want = [dict(zip(header.split("\t")[1:], map(float, r.split("\t")[1:]))) for r in rows]
    args = _parser().parse_args(common)
    assert args.func(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0] == reading and "\t" not in "".join(out)
    lines = out[1:]
    assert len(lines) == 3 and lines[1].startswith("'the movie was'") and lines[2].startswith("'' (BOS only)")
    spans = [_columns(line) for line in lines]
    assert all(len(s) == len(evaluate_cmd.FIELDS) + 1 for s in spans)
    # labels left-aligned (same start), numbers right-aligned under their header (same end)
    assert len({s[0][0] for s in spans}) == 1
    for i in range(1, len(evaluate_cmd.FIELDS) + 1):
        assert len({s[i][1] for s in spans}) == 1, i
    assert lines[0].split() == ["prompt", *evaluate_cmd.FIELDS]
    for line, w in zip(lines[1:], want):
        cells = [line[a:b] for a, b in _columns(line)][1:]
        for field, cell in zip(evaluate_cmd.FIELDS, cells):
            # 4 decimals (or 3 significant digits in scientific form): the TSV's value to that precision
            assert float(cell) == pytest.approx(w[field], abs=5e-5, rel=5e-3), (field, cell, w[field])


def test_number_format():
    from bayes_rlhf.commands._common import aligned_table, format_number

    assert [format_number(v) for v in (0.0, -0.0, 0.56335, -1.0, 3.2e-8, 1.5e7, float("inf"), float("nan"))] == [
        "0", "0", "0.5634", "-1.0000", "3.20e-08", "1.50e+07", "inf", "nan"]
    assert aligned_table(["a", "bb"], [["long label", "1"], ["x", "22.5"]]).splitlines() == [
        "a             bb", "long label     1", "x           22.5"]


def test_a_policy_that_is_no_checkpoint_is_refused_before_loading(tmp_path, monkeypatch):
    """A typo'd --policy, a run folder (its checkpoint is policy/) and a file are named as such before the
    prior loads, not as a hub download or tokenizer failure."""
    import bayes_rlhf.commands._common as common
    from bayes_rlhf.errors import ModelLoadError

    def no_loading(*args, **kwargs):
        raise AssertionError("the prior was loaded")

    monkeypatch.setattr(common, "load_target", no_loading)
    run = tmp_path / "run"
    (run / "policy").mkdir(parents=True)
    (run / "policy" / "config.json").write_text("{}")
    (tmp_path / "run.toml").write_text("")
    for policy, match in [(tmp_path / "nowhere", "does not exist; give the folder of a saved checkpoint"),
                          ("nowhere", "does not exist"),
                          (run, f"it is a run folder: use --policy {run / 'policy'}"),
                          (tmp_path, "has no config.json, so it is not a transformers checkpoint; give the folder"),
                          (tmp_path / "run.toml", "is a file")]:
        args = _parser().parse_args(["evaluate", "--policy", str(policy)])
        with pytest.raises(ModelLoadError, match=match):
            args.func(args)
    evaluate_cmd.check_policy_path(str(run / "policy"))  # a checkpoint folder passes
