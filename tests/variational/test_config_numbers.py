"""TrainerConfig and BradleyTerryConfig take numpy numbers as the Python numbers they hold."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bayes_rlhf import BradleyTerryConfig, ConfigError, TrainerConfig

PY = dict(steps=5, samples_per_prompt=4, prompts_per_step=2, lr=0.5, adam_betas=(0.5, 0.999), weight_decay=0.0,
          max_grad_norm=0.25, ppo_epochs=3, ppo_clip=0.25, gae_lambda=1.0, value_coef=0.5, grpo_epochs=2,
          value_lr=0.125, reward_max=2.0, log_z_lr=0.5, lora_rank=0, lora_alpha=16.0, seed=7, eval_every=2,
          checkpoint_every=3)


def _numpy(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, tuple):
            out[k] = tuple(np.float64(x) for x in v)
        elif isinstance(v, int):
            out[k] = np.int64(v)
        else:
            out[k] = np.float32(v)  # every float above is exact in float32
    return out


def test_numpy_numbers_give_the_same_config():
    a, b = TrainerConfig(**PY), TrainerConfig(**_numpy(PY))
    assert a == b and a.fingerprint() == b.fingerprint()
    assert json.dumps(b.to_dict()) == json.dumps(a.to_dict())  # plain Python numbers: serialisable
    assert all(type(getattr(b, k)) is type(getattr(a, k)) for k in PY)


@pytest.mark.parametrize("field, value", [("steps", True), ("steps", "5"), ("steps", np.float64(5.0)),
                                          ("lr", "0.1"), ("lr", True), ("seed", np.bool_(False)),
                                          ("adam_betas", (True, 0.9)), ("reward_max", "2")])
def test_bools_and_strings_still_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainerConfig(**{field: value})


def test_bradley_terry_config_numbers():
    a = BradleyTerryConfig(epochs=2, batch_size=8, lr=0.5, weight_decay=0.25, seed=1)
    b = BradleyTerryConfig(epochs=np.int64(2), batch_size=np.int32(8), lr=np.float32(0.5),
                           weight_decay=np.float64(0.25), seed=np.int64(1))
    assert a == b and type(b.epochs) is int and type(b.lr) is float
    for bad in (dict(epochs=True), dict(lr="0.1"), dict(weight_decay=-1.0), dict(batch_size=0)):
        with pytest.raises(ConfigError, match="BradleyTerryConfig"):
            BradleyTerryConfig(**bad)
