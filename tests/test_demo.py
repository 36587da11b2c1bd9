"""bayes_rlhf.demo: the ready demo target, the defaults every command reads, and no models <-> rewards cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf import demo
from bayes_rlhf.cli import build_parser

PACKAGE = Path(br.__file__).parent


def _imported(path: Path) -> set[str]:
    """Every bayes_rlhf module a file imports, at module level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n.startswith("bayes_rlhf")}


def test_demo_target_is_the_default_model_with_its_reward_beta_and_t():
    target = demo.demo_target(device="cpu")
    assert (target.beta, target.max_new_tokens) == (demo.DEFAULT_BETA, demo.DEFAULT_MAX_NEW_TOKENS) == (1.0, 4)
    assert str(target.prior.source) == str(demo.DEFAULT_DIR)
    ids, mask = target.prior.encode_completions(["very great .", "not good"], 4)
    assert br.evaluate_reward(target.reward, target.prior, ["the movie was"] * 2, ids, mask).tolist() == [1.0, -1.0]
    other = demo.demo_target(0.5, 2, device="cpu")
    assert (other.beta, other.max_new_tokens) == (0.5, 2)
    with pytest.raises(br.ConfigError):
        demo.demo_target(beta=0.0)
    lm, reward = br.default_model()
    assert lm.same_tokenizer(target.prior) and reward.name == "sentiment"
    post = br.exact_posterior(other, demo.DEFAULT_PROMPTS[0])
    assert post.mean_reward > post.prior_mean_reward and torch.isfinite(post.rewards).all()


def test_every_command_defaults_to_the_demo_target():
    parser = build_parser()
    for argv in (["exact"], ["evaluate", "--policy", "p"]):
        args = vars(parser.parse_args(argv))
        assert (args["model"], args["reward"], args["beta"], args["max_new_tokens"]) == (
            demo.DEFAULT_MODEL, demo.DEFAULT_REWARD, demo.DEFAULT_BETA, demo.DEFAULT_MAX_NEW_TOKENS)
    args = vars(parser.parse_args(["demo"]))
    assert (args["beta"], args["max_new_tokens"]) == (demo.DEFAULT_BETA, demo.DEFAULT_MAX_NEW_TOKENS)
    from bayes_rlhf.commands.train import load_config

    t = load_config({"target": {"prompts": ["the movie was"]}})["target"]
    assert (t["model"], t["reward"], t["beta"], t["max_new_tokens"]) == (
        demo.DEFAULT_MODEL, demo.DEFAULT_REWARD, demo.DEFAULT_BETA, demo.DEFAULT_MAX_NEW_TOKENS)


def test_models_know_no_rewards_and_rewards_no_demo():
    for path in sorted((PACKAGE / "models").glob("*.py")):
        bad = {m for m in _imported(path) if m.split(".")[1:2] in (["rewards"], ["demo"], ["target"], ["commands"])}
        assert not bad, (path.name, bad)
    for path in sorted((PACKAGE / "rewards").glob("*.py")):
        bad = {m for m in _imported(path) if m.split(".")[1:2] in (["demo"], ["commands"])}
        assert not bad, (path.name, bad)
