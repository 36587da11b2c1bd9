"""Checkpoints: resume after a kill reproduces the uninterrupted run; other configs are refused;
a NaN loss stops with the step and cause and keeps the last good checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.variational import TrainingDivergedError, train_policy


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing in the trainer catches it."""


def _kill_at(step):
    def cb(s, row):
        if s == step:
            raise Killed
    return cb


def _params(policy):
    return [p.detach().clone() for p in policy.model.parameters()]


@pytest.mark.parametrize("objective", ["rloo", "ppo", "vargrad"])
def test_resume_after_kill_reproduces_uninterrupted_run(small_target, fast_config, tmp_path, objective):
    kw = dict(steps=7, objective=objective, checkpoint_every=3)
    full, h_full = train_policy(small_target, ["w0", "w1"], fast_config(**kw, checkpoint_dir=str(tmp_path / "a")))
    cfg = fast_config(**kw, checkpoint_dir=str(tmp_path / "b"))
    with pytest.raises(Killed):
        train_policy(small_target, ["w0", "w1"], cfg, callback=_kill_at(5))
    meta = json.loads((tmp_path / "b" / "last" / "meta.json").read_text())
    assert meta["step"] == 3  # steps 4 and 5 were lost with the kill
    resumed, h_res = train_policy(small_target, ["w0", "w1"], cfg)
    assert all(torch.equal(a, b) for a, b in zip(_params(full), _params(resumed)))
    assert h_res.column("loss") == h_full.column("loss")
    assert h_res.column("step") == list(range(1, 8))


def test_resume_with_other_config_is_an_error(small_target, fast_config, tmp_path):
    train_policy(small_target, "w0", fast_config(steps=2, checkpoint_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="lr"):
        train_policy(small_target, "w0", fast_config(steps=4, lr=1e-2, checkpoint_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="prompts"):
        train_policy(small_target, "w1", fast_config(steps=4, checkpoint_dir=str(tmp_path)))
    # more steps with the same config continue the run
    _, hist = train_policy(small_target, "w0", fast_config(steps=4, checkpoint_dir=str(tmp_path)))
    assert hist.column("step") == [1, 2, 3, 4]
    # fewer would return the step-4 policy as a 3-step one (and cut its history): refused before any work
    with pytest.raises(ConfigError, match="at step 4, past steps=3"):
        train_policy(small_target, "w0", fast_config(steps=3, checkpoint_dir=str(tmp_path)))
    _, again = train_policy(small_target, "w0", fast_config(steps=4, checkpoint_dir=str(tmp_path)))
    assert again.column("step") == [1, 2, 3, 4]  # equal steps: the finished run, nothing trained
    assert again.column("loss") == hist.column("loss")


def test_checkpoint_of_an_earlier_version_resumes_when_new_fields_are_default(small_target, fast_config, tmp_path):
    """A field added to TrainerConfig after a checkpoint was written: its default matches, another value not."""
    import json

    full = train_policy(small_target, "w0", fast_config(steps=4))[0]
    train_policy(small_target, "w0", fast_config(steps=2, checkpoint_dir=str(tmp_path)))
    meta_path = tmp_path / "last" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]["grpo_epochs"]  # as written before the field existed (another hash then)
    meta["fingerprint"] = "0" * 16
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="grpo_epochs"):
        train_policy(small_target, "w0", fast_config(steps=4, grpo_epochs=2, checkpoint_dir=str(tmp_path)))
    resumed, hist = train_policy(small_target, "w0", fast_config(steps=4, checkpoint_dir=str(tmp_path)))
    assert hist.column("step") == [1, 2, 3, 4]
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


def test_checkpoint_is_written_atomically(small_target, fast_config, tmp_path):
    train_policy(small_target, "w0", fast_config(steps=4, checkpoint_every=1, checkpoint_dir=str(tmp_path)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]  # no temporary or old copies left
    names = sorted(p.name for p in (tmp_path / "last").iterdir())
    assert names == ["meta.json", "model.safetensors", "optimizer.safetensors", "rng.safetensors"]


def test_nan_loss_stops_with_step_and_cause_and_keeps_last_good_checkpoint(small_target, fast_config, tmp_path):
    calls = {"n": 0}

    def fn(ids, mask):  # fine for 4 steps, then a hard constraint that rejects the first sample
        calls["n"] += 1
        r = ((ids == 3) & mask).sum(-1).double()
        if calls["n"] > 4:
            r[0] = -torch.inf
        return r

    target = br.Target(small_target.prior, br.TokenReward(fn), 0.5, 3)
    cfg = fast_config(steps=10, checkpoint_every=2, checkpoint_dir=str(tmp_path))
    with pytest.raises(TrainingDivergedError, match="step 5.*-inf") as info:
        train_policy(target, "w0", cfg)
    assert info.value.step == 5 and "hard constraint" in info.value.cause
    meta = json.loads((tmp_path / "last" / "meta.json").read_text())
    assert meta["step"] == 4
    from safetensors.torch import load_file
    weights = load_file(str(tmp_path / "last" / "model.safetensors"))
    assert all(bool(torch.isfinite(v).all()) for v in weights.values() if v.is_floating_point())


def test_a_config_changed_after_construction_and_bad_paths_are_refused_before_work(small_target, fast_config,
                                                                                  tmp_path):
    # they once failed as bare ValueError / ZeroDivisionError mid-run, or at the first save after every step
    (tmp_path / "afile").write_text("x")
    for change, match in ((dict(lr=-1.0), "TrainerConfig.lr"), (dict(eval_every=0), "eval_every"),
                          (dict(steps=0), "TrainerConfig.steps"),
                          (dict(checkpoint_dir=str(tmp_path / "afile")), "checkpoint_dir"),
                          (dict(checkpoint_dir=str(tmp_path / "afile" / "ck")), "checkpoint_dir"),
                          (dict(log_jsonl=str(tmp_path)), "log_jsonl"),
                          (dict(log_csv=str(tmp_path / "afile" / "h.csv")), "log_csv")):
        cfg = fast_config(steps=2)
        for k, v in change.items():
            setattr(cfg, k, v)
        with pytest.raises(ConfigError, match=match):
            train_policy(small_target, "w0", cfg, evaluator=True)
    for kw, match in ((dict(adam_betas=0.9), "adam_betas"), (dict(objective=["rloo"]), "objective"),
                      (dict(log_jsonl=b"x"), "must be a path")):
        with pytest.raises(ConfigError, match=match):
            fast_config(**kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_an_unreadable_checkpoint_is_a_config_error(small_target, fast_config, tmp_path):
    cfg = fast_config(steps=2, checkpoint_dir=str(tmp_path))
    train_policy(small_target, "w0", cfg)
    model = tmp_path / "last" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:100])  # cut short (a disk filled up, a copy interrupted)
    with pytest.raises(ConfigError, match="cannot be read .*resume = false"):
        train_policy(small_target, "w0", fast_config(steps=3, checkpoint_dir=str(tmp_path)))
    (tmp_path / "last" / "meta.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot be read"):
        train_policy(small_target, "w0", fast_config(steps=3, checkpoint_dir=str(tmp_path)))


def test_non_finite_history_values_read_back_as_floats(tmp_path):
    import math

    from bayes_rlhf.variational import TrainingHistory

    h = TrainingHistory([{"step": 1, "kl": math.nan, "r": -math.inf, "name": "x"}], jsonl=str(tmp_path / "h.jsonl"))
    h.close()
    back = TrainingHistory.from_jsonl(tmp_path / "h.jsonl").rows[0]
    assert math.isnan(back["kl"]) and back["r"] == -math.inf and back["name"] == "x"


def test_a_sampler_for_an_objective_that_does_not_read_it_is_refused(small_target, fast_config):
    with pytest.raises(ConfigError, match="sampler=.*distill_source='given'"):
        train_policy(small_target, "w0", fast_config(steps=1), sampler=lambda prompt, n, generator: None)
