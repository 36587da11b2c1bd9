"""``bayes-rlhf train --config FILE.toml --out DIR`` on the default model with a short horizon."""

from __future__ import annotations

import json

import pytest

from bayes_rlhf.commands.train import load_config, train_from_config
from bayes_rlhf.errors import ConfigError

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


@pytest.mark.parametrize("text,match", [
    ("[trainer]\nsteps = 3\n", "no \\[target\\] table"),
    ("[target]\nprompts = []\n", "prompts must be a non-empty list"),
    ("[target]\nprompts = ['a']\ncolour = 1\n", "colour"),
    ("[target]\nprompts = ['a']\n[trainer]\nlr = -1.0\n", "TrainerConfig.lr"),
    ("[target]\nprompts = ['a']\n[extras]\n", "extras"),
    ("[target\n", "not valid TOML"),
])
def test_bad_config_files(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        train_from_config(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
