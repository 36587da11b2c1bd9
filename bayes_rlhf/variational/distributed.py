"""How ``train_policy`` talks to the hardware: one process of plain torch, or Hugging Face accelerate.

``TrainerConfig.use_accelerate`` picks the backend; the training loop is the same for both::

    LocalBackend        loss.backward(); torch clip_grad_norm_; one process writes everything
    AccelerateBackend   accelerator.prepare(policy model, value head, optimiser) (DDP across GPUs and
                        nodes); accelerator.backward(loss); accelerator.clip_grad_norm_; the learned
                        log Z's gradient averaged by hand (it is not a module); metrics averaged (counts
                        summed) over processes; only the main process writes checkpoints, history files
                        and the progress bar; the model unwrapped before it is returned

Each process draws its own completions: process 0 seeds its generator with ``config.seed`` and
process i > 0 with a hash of (seed, i), so N processes train on N times one process's batch and a
single process reproduces a run without accelerate exactly. Checkpoints keep every process's
generator state (gathered to the main process), so an N-process run resumed with N processes ends
where the uninterrupted run ends; the fingerprint holds N. bf16 on CUDA becomes
``Accelerator(mixed_precision="bf16")``; a CPU prior keeps the run on CPU, a GPU prior is moved to
each process's own GPU (load it with ``device=None``; a reward model stays where it was loaded).
Data parallelism (DDP) is what is supported; FSDP / DeepSpeed shard the weights, which the
checkpoint format does not handle.
"""

from __future__ import annotations

import dataclasses
import hashlib

import torch

from bayes_rlhf.errors import ConfigError
from bayes_rlhf.models.causal_lm import CausalLM

# Row columns averaged over processes (estimates from each process's samples) and summed (counts, rates).
_MEAN = ("objective", "mean_reward", "kl_prior", "entropy", "loss")
_SUM = ("reward_evals", "tokens_per_s")


def require_accelerate():
    """The ``accelerate`` module, or a ConfigError that says how to get it."""
    try:
        import accelerate
    except ImportError as exc:
        raise ConfigError("TrainerConfig.use_accelerate = true needs the optional package accelerate "
                          "(pip install accelerate); or set use_accelerate = false") from exc
    return accelerate


def is_main_process() -> bool:
    """False only in the non-main processes of an ``accelerate launch`` run: for callers of
    ``train_policy`` that write files of their own (the returned policy, a summary)."""
    try:
        from accelerate import PartialState
    except ImportError:
        return True
    return PartialState().is_main_process


def make_backend(config, prior: CausalLM):
    """The backend ``config`` asks for (call ``require_accelerate`` first for an early error)."""
    return AccelerateBackend(config, prior) if config.use_accelerate else LocalBackend()


class LocalBackend:
    """One process, plain torch."""

    is_main, process_index, num_processes = True, 0, 1

    def place(self, target):
        """``target`` with its prior on this process's device (unchanged here)."""
        return target

    def seed(self, seed: int, step: int = 0) -> int:
        """The generator seed of this process (``seed`` itself on process 0)."""
        if self.process_index == 0:
            return seed
        return int(hashlib.sha256(f"{seed}:{self.process_index}:{step}".encode()).hexdigest()[:15], 16)

    def prepare(self, model, value_head, optimizer):
        return model, value_head, optimizer

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm_(self, params, max_norm: float) -> float | None:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def gather_rng(self, generator: torch.Generator) -> list[torch.Tensor]:
        """Every process's ``generator.get_state()``, in process order (a collective: all call it)."""
        return [generator.get_state()]

    def average_grad(self, tensor: torch.Tensor) -> None:
        """Average ``tensor.grad`` over processes (for parameters outside the prepared modules)."""

    def any_process(self, flag: bool) -> bool:
        """True when ``flag`` is true on any process (so every process stops together)."""
        return flag

    def sync_log_z(self, log_z: torch.Tensor, is_set: torch.Tensor) -> None:
        """Make freshly initialised per-prompt log Z values agree across processes."""

    def reduce_row(self, row: dict) -> dict:
        return row

    def wait(self) -> None:
        """A barrier: every process reaches it before any goes on."""

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model


class AccelerateBackend(LocalBackend):
    """Data-parallel training through ``accelerate.Accelerator`` (run under ``accelerate launch``)."""

    def __init__(self, config, prior: CausalLM):
        accelerate = require_accelerate()
        cpu = prior.device.type == "cpu"
        self.accelerator = accelerate.Accelerator(cpu=cpu, mixed_precision="bf16" if config.bf16 and not cpu
                                                  else "no")
        self.is_main = self.accelerator.is_main_process
        self.process_index = self.accelerator.process_index
        self.num_processes = self.accelerator.num_processes
        self.device = self.accelerator.device

    def place(self, target):
        prior = target.prior
        if prior.device == self.device:
            return target
        moved = CausalLM(prior.model.to(self.device), prior.tokenizer, device=self.device, top_k=prior.top_k,
                         source=prior.source)
        return dataclasses.replace(target, prior=moved)

    def prepare(self, model, value_head, optimizer):
        if value_head is None:
            model, optimizer = self.accelerator.prepare(model, optimizer)
        else:
            model, value_head, optimizer = self.accelerator.prepare(model, value_head, optimizer)
        return model, value_head, optimizer

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def clip_grad_norm_(self, params, max_norm: float) -> float | None:
        norm = self.accelerator.clip_grad_norm_(params, max_norm)
        return None if norm is None else float(norm)  # DeepSpeed clips internally and may not say

    def gather_rng(self, generator: torch.Generator) -> list[torch.Tensor]:
        state = generator.get_state()
        if self.num_processes == 1:
            return [state]
        # int64 rows on the process's device: every backend (gloo, NCCL) gathers those
        rows = self.accelerator.gather(state.to(device=self.device, dtype=torch.int64).unsqueeze(0))
        return [row.to(device="cpu", dtype=torch.uint8) for row in rows]

    def average_grad(self, tensor: torch.Tensor) -> None:
        if self.num_processes > 1 and tensor.grad is not None:
            tensor.grad.copy_(self.accelerator.reduce(tensor.grad, reduction="mean"))

    def any_process(self, flag: bool) -> bool:
        if self.num_processes == 1:
            return flag
        return bool(self.accelerator.reduce(torch.tensor([float(flag)], device=self.device), reduction="sum") > 0)

    def sync_log_z(self, log_z: torch.Tensor, is_set: torch.Tensor) -> None:
        if self.num_processes == 1:
            return
        w = is_set.to(device=log_z.device, dtype=log_z.dtype)
        total = self.accelerator.reduce(torch.stack([log_z.detach() * w, w]), reduction="sum")
        with torch.no_grad():  # the mean over the processes that have initialised each prompt
            log_z.copy_(torch.where(total[1] > 0, total[0] / total[1].clamp(min=1), log_z.detach()))
        is_set.copy_((total[1] > 0).to(is_set.device))

    def reduce_row(self, row: dict) -> dict:
        if self.num_processes == 1:
            return row
        keys = [k for k in _MEAN + _SUM if k in row]
        vals = torch.tensor([float("nan") if row[k] is None else float(row[k]) for k in keys],
                            dtype=torch.float64, device=self.device)
        total = self.accelerator.reduce(vals, reduction="sum").tolist()
        out = dict(row)
        for k, v in zip(keys, total):
            out[k] = v / self.num_processes if k in _MEAN else v
        out["reward_evals"] = int(out["reward_evals"])
        return out

    def wait(self) -> None:
        self.accelerator.wait_for_everyone()

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.accelerator.unwrap_model(model, keep_fp32_wrapper=False)
