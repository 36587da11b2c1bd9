"""The ground-floor checks: numpy numbers pass as Python ones, bools and strings do not; a typo'd name
is answered with the name meant."""

import math

import numpy as np
import pytest
import torch

from bayes_rlhf._checks import check_generator, check_int, check_real, did_you_mean, is_integer, is_real, plain
from bayes_rlhf.errors import ConfigError, RewardError


@pytest.mark.parametrize("v", [3, np.int64(3), np.int32(3), np.uint8(3)])
def test_integers(v):
    assert is_integer(v) and is_real(v)
    out = check_int(v, "n")
    assert out == 3 and type(out) is int


@pytest.mark.parametrize("v", [True, np.bool_(True), "3", 3.0, np.float64(3.0), None, torch.tensor(3)])
def test_not_integers(v):
    assert not is_integer(v)
    with pytest.raises(ConfigError, match="n must be an integer >= 1"):
        check_int(v, "n")


@pytest.mark.parametrize("v", [0.5, np.float64(0.5), np.float32(0.5), np.float16(0.5), 2, np.int64(2)])
def test_reals(v):
    assert is_real(v)
    out = check_real(v, "beta", low=0.0, low_open=True)
    assert out == v and type(out) in (int, float)


def test_python_numbers_keep_their_type():
    assert type(check_real(1, "beta")) is int and type(check_real(1.5, "beta")) is float
    assert plain("x") == "x" and type(plain(np.float32(0.25))) is float


@pytest.mark.parametrize("v", [False, np.bool_(False), "0.5", None, math.nan, math.inf, np.float32("nan")])
def test_not_finite_reals(v):
    with pytest.raises(ConfigError, match="beta must be a finite number"):
        check_real(v, "beta")


def test_ranges():
    with pytest.raises(ConfigError, match="> 0"):
        check_real(0.0, "beta", low=0.0, low_open=True)
    assert check_real(0.0, "w", low=0.0) == 0.0
    with pytest.raises(ConfigError, match=r"in \[0, 1\]"):
        check_real(1.5, "w", low=0.0, high=1.0)
    with pytest.raises(ConfigError, match=">= 2"):
        check_int(1, "k", 2)
    assert check_int(-5, "offset", None) == -5


@pytest.mark.parametrize("g", [0, 123, np.random.default_rng(0), "seed", torch.tensor(1)])
def test_generator_must_be_torch_generator(g):
    with pytest.raises(ConfigError, match=r"torch\.Generator\(\)\.manual_seed\(seed\)"):
        check_generator(g)


def test_generator_none_and_torch_ok():
    check_generator(None)
    check_generator(torch.Generator().manual_seed(0))


def test_did_you_mean():
    assert did_you_mean("rlooo", ["rloo", "ppo"]) == "; did you mean 'rloo'?"
    assert did_you_mean(["step", "sed", "zzz"], ["steps", "seed", "lr"]) == (
        "; did you mean 'steps' (for 'step'), 'seed' (for 'sed')?")
    assert did_you_mean(["step"], {"steps": 1}) == "; did you mean 'steps'?"  # a registry dict: its names
    assert did_you_mean("dgp", ["dpo", "ppo", "dpg"]) == "; did you mean 'dpg' or 'dpo'?"  # a tie: both
    for names in ("zzz", 3, None, ["zzz"]):  # nothing close, or not a name: no suggestion
        assert did_you_mean(names, ["rloo", "ppo"]) == ""


def _smc_twist():
    import bayes_rlhf as br

    lm, reward = br.default_model()
    br.smc(br.Target(lm, reward, 1.0, 2), "the movie was", 8, twist="prefx", generator=torch.Generator())


def _cases():
    import bayes_rlhf as br
    from bayes_rlhf.commands.train import load_config
    from bayes_rlhf.rewards.spec import check_spec
    from bayes_rlhf.samplers.resampling import get_resampler

    return [
        (lambda: br.TrainerConfig(objective="rlooo"), ConfigError, "must be one of .*'vbon'\\], got 'rlooo'",
         "'rloo'"),
        (lambda: br.TrainerConfig.from_dict({"objective": "dgp"}), ConfigError, "'dpg'", "'dpg' or 'dpo'"),
        (lambda: br.TrainerConfig(kl_estimator="k3_los"), ConfigError, "'k1_reward', 'k3_loss'", "'k3_loss'"),
        (lambda: br.TrainerConfig.from_dict({"step": 3}), ConfigError, "valid fields: .*'steps'", "'steps'"),
        (lambda: br.TrainerConfig.from_dict({"ppo": {"clipp": 0.1}}), ConfigError, "valid fields: .*'clip'",
         "'clip'"),
        (lambda: check_spec("sentimnet"), RewardError, "use one of: sentiment \\| length", "'sentiment'"),
        (lambda: check_spec("regx:great"), RewardError, "could not import", "'regex:great'"),
        (lambda: get_resampler("sytematic"), ConfigError, "choose one of .*'systematic'", "'systematic'"),
        (_smc_twist, ConfigError, "use one of \\['prefix', 'exact'\\]", "'prefix'"),
        (lambda: load_config({"target": {"prompt": ["a"]}}), ConfigError, "valid keys: .*'prompts'", "'prompts'"),
        (lambda: load_config({"targte": {}}), ConfigError, "use \\[target\\]", "'target'"),
    ]


@pytest.mark.parametrize("case", range(11))
def test_typo_names_the_registry_and_the_name_meant(case):
    call, error, listed, meant = _cases()[case]
    with pytest.raises(error, match=listed) as info:
        call()
    assert str(info.value).endswith(f"; did you mean {meant}?"), str(info.value)
