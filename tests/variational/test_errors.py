"""Bad input is refused before any work, with a typed error that names what to change."""

from __future__ import annotations


import pytest

from bayes_rlhf.errors import ConfigError, PromptError
from bayes_rlhf.variational import TrainerConfig, train_policy


@pytest.mark.parametrize("field,value", [
    ("steps", 0), ("steps", 2.5), ("objective", "sft"), ("samples_per_prompt", 1), ("prompts_per_step", 0),
    ("lr", 0.0), ("lr", float("nan")), ("adam_betas", (0.9, 1.0)), ("max_grad_norm", -1.0),
    ("kl_estimator", "k2"), ("ppo_epochs", 0), ("ppo_clip", 0), ("gae_lambda", 1.5), ("value_coef", -1),
    ("value_lr", 0), ("dpg_proposal", "uniform"), ("distill_source", "smc_magic"), ("reward_max", float("inf")),
    ("log_z", "fixed"), ("log_z_lr", -0.1), ("lora_rank", -1), ("seed", -1), ("eval_every", 0),
    ("checkpoint_every", 0), ("progress", "yes"), ("log_jsonl", ""), ("grpo_epochs", 0), ("grpo_epochs", 1.5),
    ("grpo_scale_rewards", "yes"), ("grpo_scale_rewards", 1),
])
def test_config_field_out_of_range_names_the_field(field, value):
    with pytest.raises(ConfigError, match=f"TrainerConfig.{field}"):
        TrainerConfig(**{field: value})


def test_rejection_distillation_needs_reward_max():
    with pytest.raises(ConfigError, match="reward_max"):
        TrainerConfig(objective="distill", distill_source="rejection")


def test_unknown_field_from_dict():
    with pytest.raises(ConfigError, match="stepz"):
        TrainerConfig.from_dict({"stepz": 3})


@pytest.mark.parametrize("prompts", [[], (), None])
def test_empty_prompts(small_target, prompts):
    with pytest.raises(PromptError, match="prompts is empty"):
        train_policy(small_target, prompts, TrainerConfig(steps=1, progress=False))


def test_bad_prompts(small_target):
    with pytest.raises(PromptError, match="must be a str"):
        train_policy(small_target, ["w0", 3], TrainerConfig(steps=1, progress=False))
    with pytest.raises(PromptError, match="duplicates"):
        train_policy(small_target, ["w0", "w0"], TrainerConfig(steps=1, progress=False))


def test_prompts_per_step_larger_than_prompts(small_target):
    with pytest.raises(ConfigError, match="prompts_per_step"):
        train_policy(small_target, ["w0"], TrainerConfig(steps=1, prompts_per_step=2, progress=False))


def test_bad_target_config_and_evaluator(small_target, small_posts):
    with pytest.raises(ConfigError, match="Target"):
        train_policy("not a target", ["w0"], TrainerConfig(steps=1))
    with pytest.raises(ConfigError, match="TrainerConfig"):
        train_policy(small_target, ["w0"], {"steps": 1})
    with pytest.raises(ConfigError, match="not a training prompt"):
        train_policy(small_target, ["w0"], TrainerConfig(steps=1), evaluator=small_posts)


def test_given_distillation_needs_sampler(small_target):
    cfg = TrainerConfig(steps=1, objective="distill", distill_source="given", progress=False)
    with pytest.raises(ConfigError, match="sampler"):
        train_policy(small_target, ["w0"], cfg)


def test_lora_without_peft_says_how_to_fix(small_target, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "peft", None)  # makes `import peft` fail as if it were absent
    with pytest.raises(ConfigError, match="pip install peft"):
        train_policy(small_target, ["w0"], TrainerConfig(steps=1, lora_rank=4, progress=False))
