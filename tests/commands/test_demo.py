"""The demo command's thread setting (the demo itself runs end to end in tests/test_cli.py)."""

import torch

from bayes_rlhf import cli
from bayes_rlhf.commands import demo


def test_the_demo_runs_on_its_thread_count_and_restores_it(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(demo, "_run", lambda args: seen.append(torch.get_num_threads()) or 0)
    before = torch.get_num_threads()
    assert cli.main(["demo", "--out", str(tmp_path / "a")]) == 0
    assert cli.main(["demo", "--out", str(tmp_path / "b"), "--threads", "2"]) == 0
    assert seen == [1, 2] and torch.get_num_threads() == before


def test_a_bad_thread_count_is_refused_before_any_work(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(demo, "_run", lambda args: (_ for _ in ()).throw(AssertionError("the demo ran")))
    assert cli.main(["demo", "--out", str(tmp_path / "out"), "--threads", "0"]) == 2
    assert "threads" in capsys.readouterr().err and not (tmp_path / "out").exists()
