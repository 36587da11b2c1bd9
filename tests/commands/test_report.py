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
