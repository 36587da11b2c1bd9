"""The bayes-rlhf command: demo and exact write their outputs; bad input writes nothing; every
subcommand reads --model, --reward, --beta and --max-new-tokens the same way."""

import json
import subprocess
import sys

import pytest

from bayes_rlhf.cli import build_parser, main
from bayes_rlhf.errors import RewardError
from bayes_rlhf.rewards.spec import parse_reward
from tests.test_run_folders import refused


def test_demo_writes_summary(tmp_path, capsys):
    out = tmp_path / "demo"
    from transformers.utils import logging as hf_logging

    assert main(["demo", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    text = captured.out
    # transformers' bars for loading and saving the 28-tensor model are off during the demo only
    assert "Loading weights" not in captured.err and "Writing model shards" not in captured.err
    assert f"writing {out}/" in text and "report" in captured.err  # the slowest step says what it does
    assert hf_logging.is_progress_bar_enabled()
    assert "log Z" in text and "the movie was" in text
    # the BOS-only prompt has one label in every table: its summary, the samplers' and the policy's
    assert text.count("'' (BOS only)") == 3 and "\n  ''  " not in text
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["posteriors"]) == 3
    for p in summary["posteriors"]:
        s = p["summary"]
        assert s["posterior_mean_reward"] > s["prior_mean_reward"] and s["kl_posterior_prior"] > 0
    assert (out / "top_completions.csv").read_text().startswith("prompt,ranked_by")
    # the report, its figures and the InferenceData file
    html = (out / "report.html").read_text()
    assert "<html" in html.lower() and list((out / "figures").glob("*.pdf"))
    for fig in ("frontier_0", "training_rloo", "weights", "log_z_particles", "tokens_0_0", "rewards_0"):
        assert (out / "figures" / f"{fig}.png").exists(), fig
    import arviz as az

    assert az.from_netcdf(out / "inference_data.nc").groups()
    assert not list(tmp_path.glob(".demo*")) and not list(out.glob(".run.*"))  # no temporaries
    # the trained policy is saved as a plain transformers checkpoint, and said so
    assert "policy/" in text
    from bayes_rlhf.models import load_model

    policy = load_model(out / "policy")
    assert policy.vocab_size == summary["vocab_size"]
    # a demo with other settings is refused before any work and leaves the folder as it was
    refused(capsys, ["demo", "--out", str(out), "--seed", "1"], out, "other settings (seed 0 -> 1)")


@pytest.mark.slow
def test_demo_twice_replaces_its_own_output(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--particles", "16", "--train-steps", "2"]
    assert main(argv) == 0
    (out / "stale.txt").write_text("x")
    assert main(argv) == 0 and not (out / "stale.txt").exists() and (out / "policy" / "config.json").exists()
    assert main([*argv[:-1], "0"]) == 2  # fewer training steps: another demo
    assert main([*argv[:-1], "0", "--overwrite"]) == 0 and not (out / "policy").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]


def test_exact_command(tmp_path, capsys):
    out = tmp_path / "exact"
    code = main(["exact", "--prompt", "the food is", "--reward", "contains:great", "--beta", "0.5",
                 "--max-new-tokens", "3", "--out", str(out)])
    assert code == 0 and "the food is" in capsys.readouterr().out
    s = json.loads((out / "summary.json").read_text())["posteriors"][0]["summary"]
    assert s["beta"] == 0.5 and s["num_completions"] > 1000
    assert main(["report", str(out)]) == 0 and (out / "report.html").exists()  # a run directory


@pytest.mark.parametrize("args, message", [
    (["--beta", "0"], "beta"),
    (["--beta", "nan"], "beta"),
    (["--max-new-tokens", "0"], "argument --max-new-tokens"),  # refused by the parser: SystemExit(2)
    (["--model", "/no/such/dir"], "does not exist"),
    (["--max-new-tokens", "9"], "max_completions"),
    # the Python advice comes with the flags that take it on the command line
    (["--max-new-tokens", "9"], "On the command line: a lower --max-new-tokens, --top-k K, or --max-completions N."),
    (["--max-new-tokens", "3", "--max-completions", "100"], "or --max-completions N."),
    (["--max-completions", "0"], "argument --max-completions: must be an integer >= 1"),  # was read as no limit
    (["--reward", "nonsense"], "unknown reward"),
    (["--reward", "classifier:./nope"], "'./nope' does not exist"),  # was a hub id format error
    (["--reward", "bradley_terry:./nope"], "'./nope' does not exist"),  # was "holds no Bradley-Terry reward"
    (["--prompt", "the movie was " * 12, "--max-new-tokens", "1"], "Shorten the prompt to at most 31 tokens"),
])
def test_bad_input_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "never"
    try:
        code = main(["exact", "--prompt", "the movie was", "--out", str(out), *args])
    except SystemExit as exc:  # a bad number is refused by argparse, before the model loads
        code = exc.code
    assert code == 2 and message in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.iterdir())


def _defaults(command: str) -> dict:
    args = build_parser().parse_args([command, *({"evaluate": ["--policy", "p"]}.get(command, []))])
    return vars(args)


def test_one_vocabulary():
    import importlib

    from bayes_rlhf.commands import _common

    dm = importlib.import_module("bayes_rlhf.demo")  # the module, not the function
    assert (_common.DEFAULT_BETA, _common.DEFAULT_MAX_NEW_TOKENS) == (dm.DEFAULT_BETA, dm.DEFAULT_MAX_NEW_TOKENS)
    exact, evaluate, demo = _defaults("exact"), _defaults("evaluate"), _defaults("demo")
    for key in ("model", "reward", "beta", "max_new_tokens", "top_k", "dtype", "prompt", "overwrite"):
        assert exact[key] == evaluate[key], key
    assert (exact["model"], exact["reward"], exact["beta"], exact["max_new_tokens"]) == ("default", "sentiment", 1.0, 4)
    assert (demo["beta"], demo["max_new_tokens"]) == (1.0, 4) and demo["out"] == "demo_out"


def rescaled_reward(prompts, completions):
    """A reward named module:function on the command line."""
    return [2.0 * len(c) for c in completions]


def make_reward(lm):
    """A reward factory, named factory:module:function."""
    def reward(prompts, completions):
        return [float(len(lm.tokenizer(c, add_special_tokens=False)["input_ids"])) for c in completions]
    return reward


@pytest.mark.parametrize("command", [["exact"], ["evaluate", "--policy", "p"]])
def test_bad_reward_spec_refused_before_loading(capsys, command):
    assert main([*command, "--reward", "regex:(", "--prompt", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"bayes-rlhf {command[0]}: error: bad regular expression"), err


def test_reward_specs_mean_one_thing(default):
    lm, _ = default
    assert parse_reward("tests.test_cli:rescaled_reward", lm) is rescaled_reward  # the function is the reward
    r = parse_reward("factory:tests.test_cli:make_reward", lm)
    assert r is not make_reward and r([""], ["the movie"]) == [2.0]
    assert parse_reward("length", lm).name == "length"
    for spec, match in [("tests.test_cli:nope", "could not import"), ("no_such_module:f", "could not import"),
                        ("math:pi", "not a callable reward"), ("factory:nonsense", "package.module:function"),
                        ("bogus", "unknown reward spec"), (3, "must be a string")]:
        with pytest.raises(RewardError, match=match):
            parse_reward(spec, lm)


def test_evaluate_speaks_the_same_vocabulary(tmp_path, default, capsys):
    lm, _ = default
    lm.save_pretrained(tmp_path / "policy")  # the prior itself as the policy: KL(q || pi0) = 0
    mean = {}
    for reward in ("length", "tests.test_cli:rescaled_reward", "factory:tests.test_cli:make_reward"):
        assert main(["evaluate", "--policy", str(tmp_path / "policy"), "--model", "default", "--reward", reward,
                     "--prompt", "the food is", "--max-new-tokens", "2", "--tsv"]) == 0, reward
        reading, header, row = capsys.readouterr().out.splitlines()[:3]
        assert reading.startswith("q = the checkpoint")
        values = dict(zip(header.split("\t")[1:], map(float, row.split("\t")[1:])))
        assert values["kl_q_prior"] == pytest.approx(0.0, abs=1e-6)  # float32 log-probs, 6 digits printed
        mean[reward] = values["mean_reward"]
    # E_pi0[number of tokens] is in (1, 2] with T = 2; the factory's reward counts the text's tokens
    # (EOS not among them); the module:function reward (2 x characters) is used as it is
    assert 1.0 < mean["length"] <= 2.0
    assert 0.5 < mean["factory:tests.test_cli:make_reward"] <= mean["length"]
    assert mean["tests.test_cli:rescaled_reward"] > 2 * mean["length"]
    assert not list(tmp_path.glob("*/run.json"))  # without --out nothing is written
    refused(capsys, ["evaluate", "--policy", str(tmp_path / "policy"), "--reward", "nonsense",
                     "--prompt", "the food is"], tmp_path / "policy", "unknown reward spec")


def test_help_has_examples():
    res = subprocess.run([sys.executable, "-m", "bayes_rlhf.cli", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "Start with `bayes-rlhf demo`" in res.stdout  # where a new user begins
    for cmd in ("demo", "exact", "train", "evaluate", "report"):
        res = subprocess.run([sys.executable, "-m", "bayes_rlhf.cli", cmd, "--help"], capture_output=True, text=True)
        assert res.returncode == 0 and "example" in res.stdout


def test_paths_that_are_not_what_they_should_be_are_named_as_such(tmp_path, capsys):
    # a local path under a folder that is here is not read as a hub id; a file is not "missing"
    (tmp_path / "runs").mkdir()
    (tmp_path / "afile").write_text("x")
    for argv, message in ((["evaluate", "--policy", str(tmp_path / "runs" / "nope")], "is read as a path"),
                          (["report", str(tmp_path / "afile")], "is a file, not a directory"),
                          (["report", str(tmp_path / "afile"), "--betas", "-1", "0"], "got [-1.0, 0.0]")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
