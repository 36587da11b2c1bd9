"""``TrainerConfig``: every knob of ``train_policy``, checked when the config is built.

Defaults work out of the box: with only ``steps`` set, RLOO with k1-in-reward, 32 samples per
prompt and Adam at lr 1e-3 brings a small enumerable target to KL(q || pi*) <= 0.05 nats in a few
hundred steps on a CPU.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import MISSING, asdict, dataclass, fields

from bayes_rlhf._checks import is_integer, is_real, plain
from bayes_rlhf.errors import ConfigError

OBJECTIVE_NAMES = ("rloo", "ppo", "dpg", "distill", "vargrad", "grpo")

# Fields that do not change the trajectory of a run: a run may be resumed with other values.
_NOT_FINGERPRINTED = frozenset({"steps", "progress", "checkpoint_dir", "checkpoint_every", "eval_every",
                                "log_jsonl", "log_csv", "tensorboard_dir", "resume", "use_accelerate"})


@dataclass
class TrainerConfig:
    """Configuration of ``train_policy``.

    Parameters
    ----------
    steps : int
        Optimiser steps (outer iterations; PPO takes ``ppo_epochs`` gradient steps per iteration).
    objective : {"rloo", "ppo", "dpg", "distill", "vargrad", "grpo"}
        Which loss from ``bayes_rlhf.variational.objectives`` to minimise. "grpo" is TRL's GRPO
        (group-relative advantages, clipped ratio, k3 in the loss): a biased fit of pi*, kept to
        measure how far its fixed point is from pi*.
    samples_per_prompt : int
        Completions drawn per prompt and step (>= 2: RLOO's leave-one-out baseline needs two).
    prompts_per_step : int or None
        Prompts per step, drawn without replacement each step; None uses every prompt.
    lr : float or None
        Adam learning rate of the policy. None picks the tested default: 3e-4 for PPO (which
        takes ``ppo_epochs`` steps per batch from a noisier value baseline), 1e-3 otherwise.
    adam_betas : tuple of float
    weight_decay : float
    max_grad_norm : float or None
        Clip the global gradient norm; None does not clip.
    kl_estimator : {"k1_reward", "k3_loss"}
        "k1_reward" puts -beta (log q - log pi0) into the sequence reward (unbiased gradient of
        KL(q || pi*)). "k3_loss" adds the k3 estimator of KL(q || pi0) to the loss (GRPO style):
        its gradient is biased, kept only for comparison. GRPO always uses k3 in the loss.
    ppo_epochs, ppo_clip, gae_lambda, value_coef : PPO's inner epochs per batch, ratio clip,
        GAE lambda (gamma is 1: an episode is one completion) and value-loss weight. The default
        lambda = 1 keeps the advantage R_t - V(s_t) unbiased whatever the value head has learnt, so
        PPO's fixed point is pi*; lambda < 1 trades that for variance (on the default model lambda =
        0.95 stopped at KL(q || pi*) about 0.03 with KL(q || pi0) 0.48, against pi*'s 0.62). GRPO uses
        ``ppo_clip`` too (TRL's epsilon).
    grpo_epochs : int
        GRPO: gradient steps per sampled batch (TRL's ``num_iterations``; 1 = on-policy, ratio 1).
    grpo_scale_rewards : bool
        GRPO: divide the group-centred rewards by the group's std (TRL's default); False is Dr. GRPO.
    value_lr : float
        Adam learning rate of PPO's value head (a linear head on the policy's detached last hidden
        state, so the value loss does not pull on the policy).
    whiten_advantages : bool
        PPO: standardise advantages over the batch.
    dpg_proposal : {"policy", "prior"}
        DPG: importance weights pi*/q from policy samples or pi*/pi0 from prior samples.
    distill_source : {"exact", "rejection", "given"}
        Distillation: samples from the enumerated posterior, from exact rejection sampling (needs
        ``reward_max``), or from the ``sampler`` argument of ``train_policy``.
    reward_max : float or None
        An upper bound of the reward, for ``distill_source="rejection"``.
    log_z : {"learned", "batch"}
        VarGrad / trajectory balance: a learned log Z per prompt (TB) or the batch mean (VarGrad).
    log_z_lr : float
        Learning rate of the learned log Z.
    lora_rank : int
        0 fine-tunes every weight; > 0 trains LoRA adapters of this rank (needs ``peft``), merged
        into the returned policy.
    lora_alpha : float
    bf16 : bool
        Autocast to bfloat16 on CUDA (ignored on CPU); with ``use_accelerate``, the Accelerator's
        ``mixed_precision="bf16"``.
    use_accelerate : bool
        Train through Hugging Face accelerate (optional package: ``pip install accelerate``), for
        several GPUs or nodes under ``accelerate launch``; see ``bayes_rlhf.variational.distributed``.
        Not part of the resume fingerprint: one process gives the same run either way (the number of
        processes, when more than one, is).
    seed : int
        Seed of the run's ``torch.Generator``: sampling, prompt order. Same seed, same run on CPU.
    eval_every : int
        Steps between exact evaluations when an evaluator is attached (1 = every step).
    checkpoint_dir : str or None
        Where checkpoints go; None writes none.
    checkpoint_every : int
        Steps between checkpoints (the last step always writes one).
    resume : bool
        Resume from ``checkpoint_dir`` when it holds a checkpoint of the same config.
    log_jsonl, log_csv, tensorboard_dir : str or None
        Metric files written as the run goes (TensorBoard only when installed).
    progress : bool
        Show a tqdm progress bar.
    """

    steps: int = 300
    objective: str = "rloo"
    samples_per_prompt: int = 32
    prompts_per_step: int | None = None
    lr: float | None = None
    adam_betas: tuple = (0.9, 0.999)
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    kl_estimator: str = "k1_reward"
    ppo_epochs: int = 2
    ppo_clip: float = 0.2
    gae_lambda: float = 1.0
    value_coef: float = 0.5
    grpo_epochs: int = 1
    grpo_scale_rewards: bool = True
    value_lr: float = 1e-2
    whiten_advantages: bool = False
    dpg_proposal: str = "policy"
    distill_source: str = "exact"
    reward_max: float | None = None
    log_z: str = "learned"
    log_z_lr: float = 0.05
    lora_rank: int = 0
    lora_alpha: float = 16.0
    bf16: bool = True
    use_accelerate: bool = False
    seed: int = 0
    eval_every: int = 10
    checkpoint_dir: str | None = None
    checkpoint_every: int = 50
    resume: bool = True
    log_jsonl: str | None = None
    log_csv: str | None = None
    tensorboard_dir: str | None = None
    progress: bool = True

    def __post_init__(self):
        self.adam_betas = tuple(self.adam_betas)
        _int(self, "steps", 1)
        _choice(self, "objective", OBJECTIVE_NAMES)
        _int(self, "samples_per_prompt", 2)
        if self.prompts_per_step is not None:
            _int(self, "prompts_per_step", 1)
        if self.lr is None:
            self.lr = 3e-4 if self.objective == "ppo" else 1e-3
        _pos(self, "lr")
        if len(self.adam_betas) != 2 or not all(_is_num(b) and 0 <= b < 1 for b in self.adam_betas):
            raise ConfigError(f"TrainerConfig.adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
        self.adam_betas = tuple(plain(b) for b in self.adam_betas)
        _num(self, "weight_decay", 0.0)
        if self.max_grad_norm is not None:
            _pos(self, "max_grad_norm")
        _choice(self, "kl_estimator", ("k1_reward", "k3_loss"))
        _int(self, "ppo_epochs", 1)
        _pos(self, "ppo_clip")
        _num(self, "gae_lambda", 0.0, 1.0)
        _num(self, "value_coef", 0.0)
        _int(self, "grpo_epochs", 1)
        _pos(self, "value_lr")
        _choice(self, "dpg_proposal", ("policy", "prior"))
        _choice(self, "distill_source", ("exact", "rejection", "given"))
        if self.reward_max is not None and not (_is_num(self.reward_max) and math.isfinite(self.reward_max)):
            raise ConfigError(f"TrainerConfig.reward_max must be a finite number or None, got {self.reward_max!r}")
        self.reward_max = plain(self.reward_max)
        if self.objective == "distill" and self.distill_source == "rejection" and self.reward_max is None:
            raise ConfigError("TrainerConfig.reward_max must be set (an upper bound of the reward) when "
                              "distill_source='rejection'")
        _choice(self, "log_z", ("learned", "batch"))
        _pos(self, "log_z_lr")
        _int(self, "lora_rank", 0)
        _pos(self, "lora_alpha")
        _int(self, "seed", 0)
        _int(self, "eval_every", 1)
        _int(self, "checkpoint_every", 1)
        for name in ("bf16", "use_accelerate", "resume", "progress", "whiten_advantages",
                     "grpo_scale_rewards"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"TrainerConfig.{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("checkpoint_dir", "log_jsonl", "log_csv", "tensorboard_dir"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                v = str(v)
                setattr(self, name, v)
            if v is not None and not v:
                raise ConfigError(f"TrainerConfig.{name} must be a non-empty path or None")

    @property
    def inner_epochs(self) -> int:
        """Gradient steps per sampled batch (PPO and GRPO may reuse a batch; the others use it once)."""
        return {"ppo": self.ppo_epochs, "grpo": self.grpo_epochs}.get(self.objective, 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainerConfig":
        """Build from a dict (e.g. a TOML table); an unknown key is a ConfigError naming it."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown TrainerConfig field(s) {unknown}; valid fields: {sorted(names)}")
        return cls(**d)

    def fingerprint_dict(self, extra: dict | None = None) -> dict:
        """The fields that determine the trajectory, plus ``extra`` (target, prompts) flattened in."""
        d = {k: v for k, v in self.to_dict().items() if k not in _NOT_FINGERPRINTED}
        d.update({f"target.{k}": v for k, v in (extra or {}).items()})
        return d

    @classmethod
    def defaults(cls) -> dict:
        """Every field's default value (for checkpoints written before a field existed)."""
        return {f.name: f.default for f in fields(cls) if f.default is not MISSING}

    def fingerprint(self, extra: dict | None = None) -> str:
        """Hash of ``fingerprint_dict(extra)``: equal hashes mean a checkpoint can be resumed."""
        blob = json.dumps(self.fingerprint_dict(extra), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# numpy numbers pass as Python ones (bools do not) and are stored as Python numbers, so the
# config serialises and fingerprints exactly as if the user had typed them
_is_num = is_real


def _int(cfg, name: str, low: int) -> None:
    v = getattr(cfg, name)
    if not is_integer(v) or v < low:
        raise ConfigError(f"TrainerConfig.{name} must be an integer >= {low}, got {v!r}")
    setattr(cfg, name, int(v))


def _pos(cfg, name: str) -> None:
    v = getattr(cfg, name)
    if not _is_num(v) or not math.isfinite(v) or v <= 0:
        raise ConfigError(f"TrainerConfig.{name} must be a finite number > 0, got {v!r}")
    setattr(cfg, name, plain(v))


def _num(cfg, name: str, low: float, high: float = math.inf) -> None:
    v = getattr(cfg, name)
    if not _is_num(v) or not math.isfinite(v) or not low <= v <= high:
        rng = f">= {low}" if high == math.inf else f"in [{low}, {high}]"
        raise ConfigError(f"TrainerConfig.{name} must be a number {rng}, got {v!r}")
    setattr(cfg, name, plain(v))


def _choice(cfg, name: str, options) -> None:
    v = getattr(cfg, name)
    if v not in options:
        raise ConfigError(f"TrainerConfig.{name} must be one of {list(options)}, got {v!r}")
