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
