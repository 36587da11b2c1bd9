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


def test_bad_demo_input_is_refused_before_the_enumeration(monkeypatch, tmp_path, capsys):
    # a negative seed once failed in TrainerConfig, after the exact posteriors and SMC; a horizon past
    # the context once failed in check_space (a traceback), after the banner
    from bayes_rlhf.exact import from_target

    monkeypatch.setattr(from_target, "enumerate_completions",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("enumerated")))
    for argv, message in ((["--seed", "-1"], "--seed must be an integer >= 0"),
                          (["--max-new-tokens", "5000"], "past this model's context of 32")):
        assert cli.main(["demo", "--out", str(tmp_path / "out"), *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and not (tmp_path / "out").exists()
