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
                                 "--max-new-tokens", "2", "--out", str(tmp_path / "eval")])
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
