"""``bayes-rlhf report RUN_DIR``: a missing run directory is a clear error, not a traceback."""

from __future__ import annotations

import pytest

from bayes_rlhf.diagnostics.run_dir import RunDirError
from tests.commands.test_evaluate import _parser


def test_report_rejects_a_missing_run_dir(tmp_path):
    args = _parser().parse_args(["report", str(tmp_path / "missing")])
    with pytest.raises(RunDirError):
        args.func(args)


def test_cli_prints_a_clear_error(tmp_path, capsys):
    cli = pytest.importorskip("bayes_rlhf.cli")
    assert cli.main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err


def test_help_has_one_example_that_needs_report(tmp_path, capsys):
    """The example is one command line, and its first half leaves a run directory without a report
    (demo and evaluate --out write theirs: an example of those would be redundant)."""
    import shlex

    from bayes_rlhf.cli import main
    from bayes_rlhf.commands.report import EPILOG

    examples = [line.strip() for line in EPILOG.splitlines() if line.strip().startswith("bayes-rlhf")]
    assert examples == ["bayes-rlhf exact --out runs/exact && bayes-rlhf report runs/exact"]
    first, second = (shlex.split(part)[1:] for part in examples[0].split("&&"))
    out = tmp_path / "exact"
    swap = {"runs/exact": str(out)}
    assert main([swap.get(a, a) for a in first] + ["--prompt", "the movie was", "--max-new-tokens", "2"]) == 0
    assert (out / "summary.json").is_file() and not (out / "report.html").exists()
    assert main([swap.get(a, a) for a in second]) == 0
    assert (out / "report.html").is_file()
    assert capsys.readouterr().out.strip().endswith("report.html")


def test_report_runs_on_the_threads_asked_for_and_restores_them(tmp_path, monkeypatch):
    # two torch threads on a busy 2-core machine made `report demo_out` take 40 s against 19-26 s on one
    import torch

    import bayes_rlhf.report as report_mod

    seen = []
    monkeypatch.setattr(report_mod, "write_report", lambda *a, **k: seen.append(torch.get_num_threads()) or "x")
    before = torch.get_num_threads()
    for argv, threads in ((["report", str(tmp_path)], 1), (["report", str(tmp_path), "--threads", "2"], 2)):
        args = _parser().parse_args(argv)
        assert args.func(args) == 0
        assert seen[-1] == threads and torch.get_num_threads() == before
    with pytest.raises(SystemExit):
        _parser().parse_args(["report", str(tmp_path), "--threads", "0"])
