"""`bayes-rlhf exact --kl-budget` and `--moment`: the chosen target, its summary and its report."""

from __future__ import annotations

import json

import pytest
import torch

from bayes_rlhf.cli import main
from bayes_rlhf.diagnostics.run_dir import load_run


def test_kl_budget_chooses_beta(tmp_path, capsys):
    out = tmp_path / "budget"
    assert main(["exact", "--prompt", "the movie was", "--prompt", "the food is", "--max-new-tokens", "3",
                 "--kl-budget", "0.4", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "chosen for KL(pi* || pi0) = 0.4" in text
    summary = json.loads((out / "summary.json").read_text())
    control = summary["extra"]["control"]
    assert control["kind"] == "budget" and control["beta"] == summary["beta"]
    kls = [p["summary"]["kl_posterior_prior"] for p in summary["posteriors"]]
    assert sum(kls) / 2 == pytest.approx(0.4, abs=1e-8)  # averaged over the prompts, exactly
    assert json.loads((out / "run.json").read_text())["settings"]["kl_budget"] == 0.4
    assert main(["report", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert "<h2>Budget</h2>" in html and "chosen (exact)" in html


def test_kl_budget_enumerates_each_prompt_once(monkeypatch, capsys):
    import bayes_rlhf.exact.from_target as from_target

    calls = []
    enumerate_completions = from_target.enumerate_completions

    def counted(lm, prompt, *args, **kwargs):
        calls.append(prompt)
        return enumerate_completions(lm, prompt, *args, **kwargs)

    monkeypatch.setattr(from_target, "enumerate_completions", counted)
    assert main(["exact", "--prompt", "the movie was", "--prompt", "the food is", "--max-new-tokens", "2",
                 "--kl-budget", "0.3"]) == 0
    assert calls == ["the movie was", "the food is"]  # beta_for_kl used the tables the command printed
    assert "chosen for KL(pi* || pi0) = 0.3" in capsys.readouterr().out


def test_moment_target_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "moments"
    prompts = ["--prompt", "the movie was", "--prompt", "the food is"]
    assert main(["exact", *prompts, "--max-new-tokens", "3", "--moment", "regex:great=0.3",
                 "--moment", "length=2.5", "--out", str(out)]) == 0
    assert "regex[great]: lambda =" in capsys.readouterr().out
    control = json.loads((out / "summary.json").read_text())["extra"]["control"]
    assert control["kind"] == "moments" and control["features"] == ["regex[great]", "length"]
    assert control["achieved"] == pytest.approx([0.3, 2.5], abs=1e-8)
    # the saved tables agree: E[phi] averaged over the prompts, with phi recomputed from the texts
    run = load_run(out)
    means = torch.zeros(2, dtype=torch.float64)
    for post in run.posteriors:
        texts = post.completions
        great = torch.tensor([1.0 if "great" in t else 0.0 for t in texts], dtype=torch.float64)
        means += torch.stack([post.probs @ great, post.probs @ post.mask.sum(-1).double()]) / 2
    assert means.tolist() == pytest.approx([0.3, 2.5], abs=1e-8)
    assert main(["report", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert "Distributional control" in html and "regex[great]" in html and "I-projection" in html


@pytest.mark.parametrize("args, message", [
    (["--moment", "length"], "expected FEATURE_SPEC=VALUE"),
    (["--moment", "length=abc"], "expected FEATURE_SPEC=VALUE"),
    (["--moment", "nonsense=0.5"], "unknown reward spec"),
    (["--moment", "length=9"], "cannot be reached"),
    (["--moment", "length=2", "--kl-budget", "0.5"], "exclude each other"),
    (["--moment", "length=2", "--beta", "0.5"], "drop --reward"),
    (["--kl-budget", "0"], "--kl-budget must be a finite number > 0"),
    (["--kl-budget", "100"], "cannot be reached"),
    (["--reward", "contains:zzz"], "'zzz'"),  # a word the tokenizer cannot spell: the reward would be 0
    (["--max-new-tokens", "30"], "past this model's context of 32"),
    (["--max-new-tokens", "1000000"], "past this model's context of 32"),  # once counted b^T first: hung
])
def test_bad_control_input_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "never"
    code = main(["exact", "--prompt", "the movie was", "--max-new-tokens", "3", "--out", str(out), *args])
    assert code == 2 and message in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.iterdir())

