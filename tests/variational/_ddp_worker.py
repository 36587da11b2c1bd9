"""One process of a multi-process ``train_policy`` run, started by test_accelerate_multiprocess.py under
``accelerate launch --cpu --num_processes N`` (not collected by pytest: its name does not start with test_).

Usage::

    python -m accelerate.commands.launch --cpu --num_processes 2 ... _ddp_worker.py OUT JOBS_JSON

JOBS_JSON is a list of ``{"name": str, "prompts": [str], "config": {TrainerConfig fields},
"capture_first_step": bool}``; each job calls ``train_policy`` on the tiny target of
tests/variational/conftest.py (use_accelerate is forced on). For each job every rank writes::

    OUT/rank{i}/{name}.safetensors   the run's final tensors (model.*, value_head.*, log_z, log_z_set, as in a
                                     checkpoint) and, with capture_first_step, the first step's batch
                                     (step1.ids/mask/group/rewards), the gradients handed to the optimiser
                                     (step1.grad.<param>, after DDP's all-reduce and clipping) and the
                                     parameters after that first optimiser step (step1.param.<param>)
    OUT/rank{i}/{name}.json          {"process_index", "num_processes", "history": rows,
                                     "distributed_type", "torch_distributed": the process group's backend}
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.optim.optimizer as optim_hooks
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import bayes_rlhf as br  # noqa: E402
from bayes_rlhf.models.toy import tiny_lm  # noqa: E402
from bayes_rlhf.variational import TrainerConfig, rollout, state, train_policy, trainer  # noqa: E402
from tests.variational.conftest import word_reward  # noqa: E402


def small_target() -> br.Target:
    """The ``small_target`` fixture of tests/variational/conftest.py."""
    lm = tiny_lm("gpt2", vocab_size=6, seed=3, hidden=16)
    return br.Target(prior=lm, reward=word_reward(), beta=0.5, max_new_tokens=3)


class _Spy:
    """Records a job's final tensors and, optionally, its first step (batch, gradients, new parameters)."""

    def __init__(self, capture_first_step: bool):
        self.capture = capture_first_step
        self.run = None
        self.out: dict = {}
        self.steps = 0

    def names(self) -> dict:
        return {id(p): n for n, p in self.run.policy.model.named_parameters()}

    def make_rollout(self, orig):
        def wrapped(*args, **kwargs):
            out = orig(*args, **kwargs)
            if self.capture and "step1.ids" not in self.out:  # the first rollout: step 1's batch
                for k in ("ids", "mask", "group", "rewards"):
                    self.out[f"step1.{k}"] = getattr(out[0], k)
            return out
        return wrapped

    def train_step(self, orig):
        def wrapped(run, step, draws):
            if self.run is None:
                self.run = run
            return orig(run, step, draws)
        return wrapped

    def pre_step(self, optimizer, args, kwargs):
        if self.capture and self.run is not None and self.steps == 0:
            names = self.names()
            for p in optimizer.param_groups[0]["params"]:
                self.out[f"step1.grad.{names[id(p)]}"] = p.grad.detach().clone()

    def post_step(self, optimizer, args, kwargs):
        if self.capture and self.run is not None and self.steps == 0:
            names = self.names()
            for p in optimizer.param_groups[0]["params"]:
                self.out[f"step1.param.{names[id(p)]}"] = p.detach().clone()
        self.steps += 1

    def finish(self, orig):
        def wrapped(run):
            self.out.update(run.tensors())
            return orig(run)
        return wrapped


def run_job(target: br.Target, job: dict, out_dir: Path) -> None:
    spy = _Spy(bool(job.get("capture_first_step")))
    orig = rollout.make_rollout, trainer.train_step, state.RunState.finish
    rollout.make_rollout, trainer.train_step = spy.make_rollout(orig[0]), spy.train_step(orig[1])
    state.RunState.finish = spy.finish(orig[2])
    pre = optim_hooks.register_optimizer_step_pre_hook(spy.pre_step)
    post = optim_hooks.register_optimizer_step_post_hook(spy.post_step)
    try:
        cfg = TrainerConfig(**(job["config"] | {"use_accelerate": True}))
        policy, history = train_policy(target, job["prompts"], cfg)
    finally:
        rollout.make_rollout, trainer.train_step, state.RunState.finish = orig
        pre.remove()
        post.remove()
    backend = spy.run.backend
    rank = backend.process_index
    d = out_dir / f"rank{rank}"
    d.mkdir(parents=True, exist_ok=True)
    returned = {f"returned.{k}": v for k, v in policy.model.state_dict().items()}
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in (spy.out | returned).items()},
              str(d / f"{job['name']}.safetensors"))
    dist = torch.distributed.get_backend() if torch.distributed.is_initialized() else None
    info = {"process_index": rank, "num_processes": backend.num_processes, "history": history.rows,
            "distributed_type": str(backend.accelerator.distributed_type), "torch_distributed": dist}
    (d / f"{job['name']}.json").write_text(json.dumps(info, default=str))


def main(argv: list[str]) -> int:
    out_dir, jobs = Path(argv[0]), json.loads(Path(argv[1]).read_text())
    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    target = small_target()
    for job in jobs:
        run_job(target, job, out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
