"""RunState's optimiser: Adam's fused kernel where every parameter allows it."""

from __future__ import annotations

import torch

from bayes_rlhf.variational.state import RunState, _fused_ok


def test_cpu_run_uses_fused_adam(small_target, fast_config):
    cfg = fast_config(objective="vargrad")  # a learned log Z (float64) beside the float64 model
    run = RunState(small_target, ["w0"], cfg, cfg.bound_objective())
    assert all(group["fused"] for group in run.opt.param_groups)


def test_fused_only_for_one_supported_device_and_float_dtypes():
    cpu = torch.zeros(2)
    assert _fused_ok([cpu, torch.zeros(2, dtype=torch.float64)]) is True
    assert _fused_ok([cpu, torch.zeros(2, device="meta")]) is None   # two device types
    assert _fused_ok([torch.zeros(2, device="meta")]) is None        # a device without the kernel
