"""``TrainerConfig``: every knob of ``train_policy``, checked when the config is built.

Defaults work out of the box: with only ``steps`` set, RLOO with k1-in-reward, 32 samples per
prompt and Adam at lr 1e-3 brings a small enumerable target to KL(q || pi*) <= 0.05 nats in a few
hundred steps on a CPU.

Per-objective settings live in one section each (``settings.py``: ``config.ppo.clip``). The flat
keywords of earlier versions (``ppo_clip=0.1``) are still accepted by the constructor and
``from_dict`` (TOML), and read and written as attributes; ``FLAT_KEYS`` says where each goes
(the mapping and the migration are in ``flat_keys.py``).
Checkpoints and run folders record the flat form (``flat_dict``), the same dict and fingerprint
as earlier versions wrote, so their runs resume.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields

from bayes_rlhf._checks import did_you_mean, is_real, plain
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.variational.flat_keys import (FLAT_KEYS, SECTION_TYPES, as_section, flat_form, install_flat_keywords,
                                              nest_dotted)
from bayes_rlhf.variational.kl_control import check_kl_control
from bayes_rlhf.variational.objectives import OBJECTIVE_NAMES, BoundObjective, Objective, get_objective
from bayes_rlhf.variational.section import check_bool, check_int_at_least, check_number, check_positive
from bayes_rlhf.variational.settings import (BoNConfig, DistillConfig, DPGConfig, DPOConfig, FDPGConfig, GRPOConfig,
                                             KLControlConfig, PPOConfig, RLOOConfig, VarGradConfig)

# Fields that do not change the trajectory of a run: a run may be resumed with other values.
_NOT_FINGERPRINTED = frozenset({"steps", "progress", "checkpoint_dir", "checkpoint_every", "eval_every",
                                "log_jsonl", "log_csv", "tensorboard_dir", "resume", "use_accelerate"})


@dataclass
class TrainerConfig:
    """Configuration of ``train_policy``.

    Parameters
    ----------
    steps : int
        Optimiser steps (outer iterations; PPO and GRPO may take several gradient steps per batch).
    objective : str
        A name in ``bayes_rlhf.variational.objectives.OBJECTIVES``: "rloo", "ppo", "dpg", "distill",
        "vargrad", "grpo", or one added with ``register_objective``. "grpo" is TRL's GRPO
        (group-relative advantages, clipped ratio, k3 in the loss): a biased fit of pi*, kept to
        measure how far its fixed point is from pi*. "dpo", "ipo" (from preference pairs) and
        "online_dpo" are in ``objectives/dpo.py``.
    samples_per_prompt : int
        Completions drawn per prompt and step (>= 2: RLOO's leave-one-out baseline needs two);
        DPO and IPO draw samples_per_prompt // 2 preference pairs per prompt and step.
    prompts_per_step : int or None
        Prompts per step, drawn without replacement each step; None uses every prompt.
    lr : float or None
        Adam learning rate of the policy. None picks the objective's tested default
        (``Objective.default_lr``): 3e-4 for PPO (which takes several steps per batch from a
        noisier value baseline), 1e-3 otherwise.
    adam_betas : tuple of float
    weight_decay : float
    max_grad_norm : float or None
        Clip the global gradient norm; None does not clip.
    rloo, ppo, grpo, dpg, distill, vargrad : settings sections
        ``RLOOConfig`` (kl_estimator), ``PPOConfig`` (epochs, clip, gae_lambda, value_coef,
        value_lr, whiten_advantages, kl_estimator), ``GRPOConfig`` (epochs, clip, scale_rewards),
        ``DPGConfig`` (proposal), ``DistillConfig`` (source, reward_max), ``VarGradConfig``
        (log_z, log_z_lr); a dict is turned into its section. Only the objective's own section
        is read. The flat keywords ``kl_estimator``, ``ppo_epochs``, ``ppo_clip``, ``gae_lambda``,
        ``value_coef``, ``value_lr``, ``whiten_advantages``, ``grpo_epochs``,
        ``grpo_scale_rewards``, ``dpg_proposal``, ``distill_source``, ``reward_max``, ``log_z``
        and ``log_z_lr`` set the same fields (``FLAT_KEYS``).
    kl_control : KLControlConfig
        Adaptive beta (Ziegler et al. 2019, ``kl_control.py``): ``kl_target=0.5, kl_horizon=10000``
        (flat keywords of ``kl_control.target`` and ``kl_control.horizon``) move beta each step
        towards KL(q || pi0) = kl_target; off (``kl_target=None``) by default.
    dpo : DPOConfig
        DPO, IPO and online DPO: ``judge`` ("bradley_terry" or "better"; flat ``dpo_judge``), how
        online DPO labels its pairs. DPO and IPO read ``train_policy(..., preferences=...)``.
    fdpg : FDPGConfig
        f-DPG (``objectives/fdpg.py``): ``f_divergence`` ("forward_kl", "reverse_kl", "js", "tv",
        "chi2", "jeffreys"), ``proposal``, ``baseline``; flat ``f_divergence``, ``fdpg_proposal``,
        ``fdpg_baseline``.
    bon : BoNConfig
        Best-of-N distillation, "bond" and "vbon" (``objectives/bond.py``): ``n`` (flat ``bon_n``),
        ``quantile`` ("exact" or "prior"), ``quantile_samples``, ``quantile_seed``, ``proposal``
        (flat ``bon_quantile``, ``bon_quantile_samples``, ``bon_quantile_seed``, ``bon_proposal``).
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
    rloo: RLOOConfig = field(default_factory=RLOOConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    dpg: DPGConfig = field(default_factory=DPGConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    vargrad: VarGradConfig = field(default_factory=VarGradConfig)
    kl_control: KLControlConfig = field(default_factory=KLControlConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    fdpg: FDPGConfig = field(default_factory=FDPGConfig)
    bon: BoNConfig = field(default_factory=BoNConfig)
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
        """Checks and normalises every field (run again by train_policy: a field set after construction)."""
        if isinstance(self.adam_betas, (str, bytes)) or not hasattr(self.adam_betas, "__iter__"):
            raise ConfigError(f"TrainerConfig.adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
        self.adam_betas = tuple(self.adam_betas)
        self.steps = check_int_at_least(self.steps, "TrainerConfig.steps", 1)
        record = get_objective(self.objective)
        self.samples_per_prompt = check_int_at_least(self.samples_per_prompt, "TrainerConfig.samples_per_prompt", 2)
        if self.prompts_per_step is not None:
            self.prompts_per_step = check_int_at_least(self.prompts_per_step, "TrainerConfig.prompts_per_step", 1)
        self.lr = check_positive(record.default_lr if self.lr is None else self.lr, "TrainerConfig.lr")
        if len(self.adam_betas) != 2 or not all(is_real(b) and 0 <= b < 1 for b in self.adam_betas):
            raise ConfigError(f"TrainerConfig.adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
        self.adam_betas = tuple(plain(b) for b in self.adam_betas)
        self.weight_decay = check_number(self.weight_decay, "TrainerConfig.weight_decay", 0.0)
        if self.max_grad_norm is not None:
            self.max_grad_norm = check_positive(self.max_grad_norm, "TrainerConfig.max_grad_norm")
        for name, kind in SECTION_TYPES.items():
            setattr(self, name, as_section(getattr(self, name), kind))
        record.check(record.settings_of(self))
        check_kl_control(self.kl_control, record.source(record.settings_of(self)), self.objective)
        if self.kl_control.target is not None and record.retarget is not None:  # it fits its own target
            raise ConfigError(f"TrainerConfig.kl_target cannot steer objective={self.objective!r}: it fits a target of "
                              "its own (best-of-N: beta 1), which the controller would re-tilt; set kl_target=None")
        self.lora_rank = check_int_at_least(self.lora_rank, "TrainerConfig.lora_rank", 0)
        self.lora_alpha = check_positive(self.lora_alpha, "TrainerConfig.lora_alpha")
        for name, low in (("seed", 0), ("eval_every", 1), ("checkpoint_every", 1)):
            setattr(self, name, check_int_at_least(getattr(self, name), f"TrainerConfig.{name}", low))
        for name in ("bf16", "use_accelerate", "resume", "progress"):
            check_bool(getattr(self, name), f"TrainerConfig.{name}")
        for name in ("checkpoint_dir", "log_jsonl", "log_csv", "tensorboard_dir"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                if not isinstance(v, os.PathLike):  # bytes or a number would become a path named "b'x'" or "5"
                    raise ConfigError(f"TrainerConfig.{name} must be a path (str or pathlib.Path) or None, got {v!r}")
                v = os.fspath(v)
                setattr(self, name, v)
            if v is not None and not v:
                raise ConfigError(f"TrainerConfig.{name} must be a non-empty path or None")

    # ------------------------------------------------------------------ the objective
    @property
    def objective_record(self) -> Objective:
        """The ``Objective`` registered under ``objective``."""
        return get_objective(self.objective)

    def bound_objective(self) -> BoundObjective:
        """The objective resolved against this config (what the training loop reads)."""
        return self.objective_record.bind(self)

    @property
    def inner_epochs(self) -> int:
        """Gradient steps per sampled batch (PPO and GRPO may reuse a batch; the others use it once)."""
        return self.bound_objective().inner_epochs

    # ------------------------------------------------------------------ serialising
    def to_dict(self) -> dict:
        """Every field; the sections as nested dicts."""
        d = asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainerConfig":
        """Build from a dict (e.g. a TOML table): fields, sections as dicts, flat keywords of earlier
        versions and dotted ``"ppo.clip"`` keys; an unknown key is a ConfigError naming it."""
        d = nest_dotted(d)
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names - set(FLAT_KEYS))
        if unknown:
            raise ConfigError(f"unknown TrainerConfig field(s) {unknown}; valid fields: {sorted(names)}"
                              f"{did_you_mean(unknown, names | set(FLAT_KEYS))}")
        return cls(**d)

    def flat_dict(self) -> dict:
        """Every field with the sections in the flat form of earlier versions (``ppo_clip``; see
        ``flat_keys.flat_form``): what checkpoints and run folders record, so theirs still match."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in SECTION_TYPES}
        d["adam_betas"] = list(self.adam_betas)
        return d | flat_form({name: getattr(self, name) for name, kind in SECTION_TYPES.items()
                               if kind.recorded_at_default or getattr(self, name) != kind()})

    def fingerprint_dict(self, extra: dict | None = None) -> dict:
        """The fields that determine the trajectory (``flat_dict``), plus ``extra`` (target, prompts)
        flattened in."""
        d = {k: v for k, v in self.flat_dict().items() if k not in _NOT_FINGERPRINTED}
        d.update({f"target.{k}": v for k, v in (extra or {}).items()})
        return d

    @classmethod
    def defaults(cls) -> dict:
        """Every field's default value, in ``flat_dict``'s form (for checkpoints written before a
        field existed)."""
        out = {f.name: f.default for f in fields(cls) if f.default is not MISSING}
        return out | flat_form({name: kind() for name, kind in SECTION_TYPES.items()})

    def fingerprint(self, extra: dict | None = None) -> str:
        """Hash of ``fingerprint_dict(extra)``: equal hashes mean a checkpoint can be resumed."""
        blob = json.dumps(self.fingerprint_dict(extra), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


install_flat_keywords(TrainerConfig)

__all__ = ["TrainerConfig", "FLAT_KEYS", "OBJECTIVE_NAMES"]
