"""TrainerConfig's nested sections and the flat keywords of earlier versions: both forms build the same
config, TOML files of either form load, and checkpoints and run folders record what earlier versions did."""

from __future__ import annotations

import tomllib

import pytest

from bayes_rlhf.errors import ConfigError
from bayes_rlhf.variational import GRPOConfig, PPOConfig, TrainerConfig
from bayes_rlhf.variational.config import FLAT_KEYS
from bayes_rlhf.variational.settings import SECTIONS

_SECTIONS = {s.name: s for s in SECTIONS}

# Every flat keyword of the earlier TrainerConfig with a value other than its default.
FLAT = dict(kl_estimator="k3_loss", ppo_epochs=3, ppo_clip=0.1, gae_lambda=0.9, value_coef=0.25, value_lr=0.02,
            whiten_advantages=True, grpo_epochs=2, grpo_scale_rewards=False, dpg_proposal="prior",
            distill_source="rejection", reward_max=2.0, log_z="batch", log_z_lr=0.1)
NESTED = dict(rloo={"kl_estimator": "k3_loss"},
              ppo={"epochs": 3, "clip": 0.1, "gae_lambda": 0.9, "value_coef": 0.25, "value_lr": 0.02,
                   "whiten_advantages": True, "kl_estimator": "k3_loss"},
              grpo={"epochs": 2, "clip": 0.1, "scale_rewards": False}, dpg={"proposal": "prior"},
              distill={"source": "rejection", "reward_max": 2.0}, vargrad={"log_z": "batch", "log_z_lr": 0.1})


def test_flat_keywords_map_into_the_sections():
    # keywords added later belong to sections recorded only when set (Section.recorded_at_default)
    later = {k for k, targets in FLAT_KEYS.items() if not any(_SECTIONS[s].recorded_at_default for s, _ in targets)}
    assert sorted(set(FLAT_KEYS) - later) == sorted(FLAT)
    flat, nested = TrainerConfig(objective="ppo", **FLAT), TrainerConfig(objective="ppo", **NESTED)
    assert flat == nested
    assert flat.ppo == PPOConfig(epochs=3, clip=0.1, gae_lambda=0.9, value_coef=0.25, value_lr=0.02,
                                 whiten_advantages=True, kl_estimator="k3_loss")
    assert flat.grpo == GRPOConfig(epochs=2, clip=0.1, scale_rewards=False)  # ppo_clip sets GRPO's clip too
    assert {k: getattr(flat, k) for k in FLAT} == FLAT  # and reads back as the flat attribute
    flat.ppo_clip = 0.3  # writing one sets every field it names, checked
    assert flat.ppo.clip == flat.grpo.clip == 0.3
    with pytest.raises(ConfigError, match="TrainerConfig.ppo_clip"):
        flat.ppo_clip = -1.0


def test_a_flat_keyword_over_fields_that_differ_is_ambiguous_to_read():
    cfg = TrainerConfig(ppo=PPOConfig(clip=0.1), grpo=GRPOConfig(clip=0.3))
    with pytest.raises(ConfigError, match="ppo.clip = 0.1 and grpo.clip = 0.3"):
        cfg.ppo_clip
    assert cfg.fingerprint_dict()["ppo.clip"] == 0.1 and "ppo_clip" not in cfg.fingerprint_dict()


def test_toml_of_either_form_loads():
    old = tomllib.loads("[trainer]\nobjective = 'grpo'\nppo_clip = 0.1\ngrpo_epochs = 2\ngrpo_scale_rewards = false\n")
    new = tomllib.loads("[trainer]\nobjective = 'grpo'\nppo.clip = 0.1\n[trainer.grpo]\nclip = 0.1\nepochs = 2\n"
                        "scale_rewards = false\n")
    a, b = TrainerConfig.from_dict(old["trainer"]), TrainerConfig.from_dict(new["trainer"])
    assert a == b and a.grpo == GRPOConfig(epochs=2, clip=0.1, scale_rewards=False) and a.inner_epochs == 2
    assert TrainerConfig.from_dict({"grpo.epochs": 3}).grpo.epochs == 3  # dotted keys too
    assert TrainerConfig.from_dict(a.to_dict()) == a  # to_dict (nested) round-trips
    with pytest.raises(ConfigError, match=r"unknown TrainerConfig.grpo field\(s\) \['clipp'\]"):
        TrainerConfig.from_dict({"grpo": {"clipp": 0.1}})
    with pytest.raises(ConfigError, match="TrainerConfig.ppo must be a PPOConfig"):
        TrainerConfig(ppo=0.2)


def test_checkpoints_and_run_folders_record_what_earlier_versions_did():
    # fingerprints written by the version before the sections (flat TrainerConfig fields) for these
    # configs: a checkpoint or run folder of that version resumes with no migration at all
    extra = {"prompts": ["a"], "beta": 0.5}
    assert TrainerConfig().fingerprint(extra) == "e9dce3f218185881"
    cfg = TrainerConfig(objective="grpo", ppo_clip=0.1, grpo_epochs=3, kl_estimator="k3_loss", log_z="batch",
                        distill_source="rejection", reward_max=2.0, dpg_proposal="prior")
    assert cfg.fingerprint(extra) == "5613d94bf95a9f93"
    d = cfg.fingerprint_dict()
    assert d["ppo_clip"] == 0.1 and d["grpo_epochs"] == 3 and not any("." in k for k in d)
    assert set(TrainerConfig.defaults()) >= set(d)  # every recorded field has a default for older checkpoints
