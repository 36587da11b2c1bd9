"""``bayes-rlhf train --config FILE.toml --out DIR`` on the default model with a short horizon."""

from __future__ import annotations

import json

import pytest

from bayes_rlhf.cli import main
from bayes_rlhf.commands.train import load_config, train_from_config
from bayes_rlhf.errors import ConfigError, OutputDirError
from tests.test_run_folders import refused, tree_hash

TOML = """
[target]
model = "default"
reward = "sentiment"
beta = 1.0
max_new_tokens = 2
prompts = ["the movie was", "the food is"]

[trainer]
steps = 4
samples_per_prompt = 8
progress = false
checkpoint_every = 2

[evaluate]
exact = true
"""


def test_train_command_writes_run_and_resumes(tmp_path, capsys):
    import argparse

    from bayes_rlhf.commands import train

    cfg = tmp_path / "run.toml"
    cfg.write_text(TOML)
    parser = argparse.ArgumentParser()
    train.register(parser.add_subparsers())
    args = parser.parse_args(["train", "--config", str(cfg), "--out", str(tmp_path / "out")])
    assert args.func(args) == 0
    assert "exact KL(q||pi*)" in capsys.readouterr().out
    out = tmp_path / "out"
    for name in ("policy/config.json", "policy/model.safetensors", "history.jsonl", "history.csv", "config.toml",
                 "summary.json", "checkpoints/last/meta.json"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["exact"]["kl_q_posterior"] >= 0
    assert len((out / "history.jsonl").read_text().splitlines()) == 4
    # same command with more steps resumes from the checkpoint instead of starting over
    cfg.write_text(TOML.replace("steps = 4", "steps = 6"))
    again = train_from_config(cfg, out)
    assert again["steps"] == 6
    rows = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert "steps = 6" in (out / "config.toml").read_text()
    # the report of a train folder is that of its exact/ run directory
    assert main(["report", str(out)]) == 0 and (out / "exact" / "report.html").exists()
    assert "exact/report.html" in capsys.readouterr().out
    # another config is refused before anything is loaded, leaving the folder (config.toml too) as it was
    before = tree_hash(out)
    cfg.write_text(TOML.replace("steps = 4", "steps = 6").replace("beta = 1.0", "beta = 0.5"))
    with pytest.raises(OutputDirError, match=r"other settings \(target.beta 1.0 -> 0.5\)"):
        train_from_config(cfg, out)
    refused(capsys, ["train", "--config", str(cfg), "--out", str(out)], out, "target.beta 1.0 -> 0.5")
    assert tree_hash(out) == before
    # fewer steps than the checkpoint's would relabel the step-6 policy as step 5 (and cut its history):
    # refused, as is dropping [evaluate] exact (the rerun would delete exact/)
    cfg.write_text(TOML.replace("steps = 4", "steps = 5"))
    refused(capsys, ["train", "--config", str(cfg), "--out", str(out)], out, "at step 6, past steps=5")
    cfg.write_text(TOML.replace("steps = 4", "steps = 6").replace("exact = true", "exact = false"))
    refused(capsys, ["train", "--config", str(cfg), "--out", str(out)], out, "evaluate.exact True -> False")
    assert tree_hash(out) == before
    # --overwrite trains afresh beside it and swaps the new run in
    cfg.write_text(TOML.replace("beta = 1.0", "beta = 0.5").replace("steps = 4", "steps = 3"))
    assert main(["train", "--config", str(cfg), "--out", str(out), "--overwrite"]) == 0
    rows = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    assert [r["step"] for r in rows] == [1, 2, 3] and summary["beta"] == 0.5
    assert summary["trainer"]["checkpoint_dir"] == str(out / "checkpoints")  # not the staging folder's
    assert "beta = 0.5" in (out / "config.toml").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run.toml"]
    assert json.loads((out / "exact" / "summary.json").read_text())["beta"] == 0.5


def test_report_of_a_train_folder_without_exact_says_what_to_do(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text(TOML.replace("exact = true", "exact = false").replace("steps = 4", "steps = 1"))
    out = tmp_path / "out"
    assert main(["train", "--config", str(cfg), "--out", str(out)]) == 0 and not (out / "exact").exists()
    refused(capsys, ["report", str(out)], out, "[evaluate] exact = true")
    # the evaluate command it suggests compares the policy with the target it was trained for
    import shlex

    from bayes_rlhf.commands.report import run_directory
    from bayes_rlhf.diagnostics.run_dir import RunDirError

    with pytest.raises(RunDirError) as info:
        run_directory(out)
    command = str(info.value).split("`")[3]
    assert command.endswith(" --out DIR") and "--max-new-tokens 2" in command
    argv = shlex.split(command.replace("--out DIR", f"--out {tmp_path / 'eval'}"))
    assert argv[:2] == ["bayes-rlhf", "evaluate"] and main(argv[1:]) == 0
    rows = capsys.readouterr().out.splitlines()[2:4]
    assert [r.split("  ")[0] for r in rows] == ["'the movie was'", "'the food is'"]  # the config's prompts
    assert (tmp_path / "eval" / "report.html").is_file()


@pytest.mark.parametrize("text,match", [
    ("[trainer]\nsteps = 3\n", "no \\[target\\] table"),
    ("[target]\nprompts = []\n", "prompts must be a non-empty list"),
    ("[target]\nprompts = ['a']\ncolour = 1\n", "colour"),
    ("[target]\nprompts = ['a']\n[trainer]\nlr = -1.0\n", "TrainerConfig.lr"),
    ("[target]\nprompts = ['a']\n[extras]\n", "extras"),
    ("[target\n", "not valid TOML"),
    ("[target]\nprompts = ['a']\n[evaluate]\nexact = 'yes'\n", "exact must be true or false"),
    ("[target]\nprompts = ['a', 3]\n", "list of strings"),
    ("[target]\nprompts = ['a']\nbeta = '1'\n", "beta must be a finite number > 0"),
    ("[target]\nprompts = ['a']\nbeta = 0\n", "beta must be a finite number > 0"),
    ("[target]\nprompts = ['a']\nmax_new_tokens = 2.5\n", "max_new_tokens must be an integer"),
    ("[target]\nprompts = ['a']\ntop_k = true\n", "top_k must be an integer"),
    ("[target]\nprompts = ['a']\ndtype = 'int8'\n", "dtype must be one of"),
    ("[target]\nprompts = ['a']\nmodel = 3\n", "model must be a string"),
    ("[target]\nprompts = ['a']\nreward = ['sentiment']\n", "reward must be a string"),
    ("target = 3\n", "target must be a table"),
    ("[target]\nprompts = ['a']\n[trainer]\nsteps = 'many'\n", "TrainerConfig.steps"),
])
def test_bad_config_files(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        train_from_config(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_config_through_the_cli_leaves_out_alone(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    path = tmp_path / "bad.toml"
    path.write_text("[target]\nprompts = ['a']\n[evaluate]\nexact = 'yes'\n")
    refused(capsys, ["train", "--config", str(path), "--out", str(out)], out, "[evaluate] exact must be true or false")
    path.write_text("[target]\nprompts = ['the movie was']\n")  # a good config onto a foreign folder
    refused(capsys, ["train", "--config", str(path), "--out", str(out)], out, "not written by bayes-rlhf (notes.txt)")


@pytest.mark.parametrize("change,match", [
    (("max_new_tokens = 2", "max_new_tokens = 30"), "past this model's context of 32"),
    (("progress = false", "progress = false\nprompts_per_step = 5"), "prompts_per_step=5 is more than the 2"),
    (("progress = false", "progress = false\nobjective = 'dpo'"), "learns from preference pairs"),
    (("progress = false", "progress = false\nlog_jsonl = 'elsewhere.jsonl'"), "[trainer] log_jsonl"),
    (("progress = false", "progress = false\ncheckpoint_dir = 'elsewhere'"), "[trainer] checkpoint_dir"),
    (('reward = "sentiment"', 'reward = "contains:zzz"'), "'zzz'"),
])
def test_errors_found_with_the_model_loaded_still_write_nothing(tmp_path, capsys, change, match):
    # each once wrote config.toml and run.json first, and the folder then refused the corrected rerun
    cfg = tmp_path / "run.toml"
    cfg.write_text(TOML.replace(*change))
    refused(capsys, ["train", "--config", str(cfg), "--out", str(tmp_path / "out")], tmp_path / "out", match)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.toml"]


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_a_bon_run_is_evaluated_against_the_best_of_n_law(tmp_path):
    from bayes_rlhf.variational.objectives import bon_posterior

    cfg = tmp_path / "bond.toml"
    cfg.write_text(TOML.replace("checkpoint_every = 2", 'checkpoint_every = 2\nobjective = "bond"\nbon_n = 4')
                   .replace('prompts = ["the movie was", "the food is"]', 'prompts = ["the movie was"]'))
    summary = train_from_config(cfg, tmp_path / "out")
    import bayes_rlhf as br
    from bayes_rlhf.demo import demo_target

    post = br.exact_posterior(demo_target(beta=1.0, max_new_tokens=2), "the movie was")
    policy = br.load_model(tmp_path / "out" / "policy")
    want = br.compare(policy, bon_posterior(post, 4)).kl_q_posterior  # against BoN_4, not pi*
    assert summary["exact"]["kl_q_posterior"] == pytest.approx(want, rel=1e-6, abs=1e-9)
    assert abs(br.compare(policy, post).kl_q_posterior - want) > 1e-3  # the two laws are told apart


def test_the_final_policy_is_walked_once_for_summary_and_exact_dir(tmp_path, monkeypatch):
    """summary.json's exact KLs and exact/'s log q tables come from one walk of the final policy per
    prompt (they took one each before), with the numbers a fresh evaluation of the saved policy gives."""
    import torch

    import bayes_rlhf as br
    import bayes_rlhf.exact.enumerate as enumerate_module
    import bayes_rlhf.exact.from_target as from_target
    from bayes_rlhf.demo import demo_target
    from bayes_rlhf.diagnostics.exact import policy_log_probs
    from bayes_rlhf.diagnostics.run_dir import load_run
    from bayes_rlhf.variational.evaluation import evaluate

    walks = []

    def counted(original, kind):
        def walk(lm, prompt, *args, **kwargs):
            walks.append((kind, prompt))
            return original(lm, prompt, *args, **kwargs)
        return walk

    monkeypatch.setattr(from_target, "enumerate_completions", counted(from_target.enumerate_completions, "prior"))
    monkeypatch.setattr(enumerate_module, "enumerate_completions",
                        counted(enumerate_module.enumerate_completions, "policy"))
    prompts = ["the movie was", "the food is"]
    cfg = load_config({"target": {"max_new_tokens": 2, "prompts": prompts},
                       "trainer": {"steps": 3, "samples_per_prompt": 8, "progress": False}, "evaluate": {"exact": True}})
    summary = train_from_config(cfg, tmp_path / "out")
    # each posterior enumerated once; the policy walked at the last step (eval_every = 10 > steps) by the
    # trainer's evaluator, then once more for summary.json and exact/ together (three walks before)
    assert walks == [("prior", p) for p in prompts] + [("policy", p) for p in prompts] * 2
    monkeypatch.undo()
    policy = br.load_model(tmp_path / "out" / "policy")  # the saved weights: the final policy, bit for bit
    posts = {p: br.exact_posterior(demo_target(beta=1.0, max_new_tokens=2), p) for p in prompts}
    want = evaluate(policy, posts)  # what the command computed before: compare(policy, post) per prompt
    assert {k: summary["exact"][k] for k in want} == want
    saved = load_run(tmp_path / "out" / "exact").policies["rloo"]
    for table, post in zip(saved, posts.values()):
        assert torch.equal(table, policy_log_probs(policy, post))
