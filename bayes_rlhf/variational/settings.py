"""Per-objective settings: one small frozen dataclass per objective, held by ``TrainerConfig``.

Each field is declared with its check and, where it had one, the flat ``TrainerConfig`` keyword of
earlier versions (``ppo_clip`` is ``ppo.clip`` and ``grpo.clip``), so that old keyword calls, TOML
files and checkpoints map onto the nested form (``flat_keys.FLAT_KEYS``)::

    TrainerConfig(objective="ppo", ppo=PPOConfig(clip=0.1))   # the nested form
    TrainerConfig(objective="ppo", ppo_clip=0.1)               # the same config
    [trainer] ppo.clip = 0.1   or   [trainer.ppo] clip = 0.1   or   [trainer] ppo_clip = 0.1

An objective's loss receives its own section only (``Objective.settings`` names it). The field
checks and the ``Section`` base that runs them are in ``section.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from bayes_rlhf.variational.section import (Section, check_bool, check_choice, check_finite_or_none,
                                            check_int_at_least, check_number, check_positive, check_positive_or_none,
                                            setting)


KL_ESTIMATORS = ("k1_reward", "k3_loss")


# ----------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class RLOOConfig(Section):
    """RLOO (REINFORCE, leave-one-out baseline).

    kl_estimator : {"k1_reward", "k3_loss"}
        "k1_reward" puts -(log q - log pi0) into the sequence reward (unbiased gradient of
        KL(q || pi*)); "k3_loss" adds the k3 estimator of KL(q || pi0) to the loss (GRPO style,
        biased, kept for comparison).
    """

    name = "rloo"
    kl_estimator: str = setting("k1_reward", check_choice, "kl_estimator", options=KL_ESTIMATORS)


@dataclass(frozen=True)
class PPOConfig(Section):
    """PPO: clipped ratio, GAE advantages from a value head, KL to pi0 in the per-token reward.

    epochs : int
        Gradient steps per sampled batch.
    clip : float
        Ratio clip epsilon.
    gae_lambda : float
        GAE lambda (gamma is 1: an episode is one completion). The default 1 keeps the advantage
        R_t - V(s_t) unbiased whatever the value head has learnt, so PPO's fixed point is pi*;
        lambda < 1 trades that for variance (on the default model lambda = 0.95 stopped at
        KL(q || pi*) about 0.03 with KL(q || pi0) 0.48, against pi*'s 0.62).
    value_coef : float
        Weight of the value loss.
    value_lr : float
        Adam learning rate of the value head (a linear head on the policy's detached last hidden
        state, so the value loss does not pull on the policy).
    whiten_advantages : bool
        Standardise advantages over the batch.
    kl_estimator : {"k1_reward", "k3_loss"}
        As in ``RLOOConfig``, per token.
    """

    name = "ppo"
    epochs: int = setting(2, check_int_at_least, "ppo_epochs", low=1)
    clip: float = setting(0.2, check_positive, "ppo_clip")
    gae_lambda: float = setting(1.0, check_number, "gae_lambda", low=0.0, high=1.0)
    value_coef: float = setting(0.5, check_number, "value_coef", low=0.0)
    value_lr: float = setting(1e-2, check_positive, "value_lr")
    whiten_advantages: bool = setting(False, check_bool, "whiten_advantages")
    kl_estimator: str = setting("k1_reward", check_choice, "kl_estimator", options=KL_ESTIMATORS)


@dataclass(frozen=True)
class GRPOConfig(Section):
    """GRPO as TRL trains it (group-relative advantages, clipped ratio, k3 in the loss).

    epochs : int
        Gradient steps per sampled batch (TRL's ``num_iterations``; 1 = on-policy, ratio 1).
    clip : float
        Ratio clip epsilon (TRL's epsilon; the flat keyword ``ppo_clip`` sets it with PPO's).
    scale_rewards : bool
        Divide the group-centred rewards by the group's std (TRL's default); False is Dr. GRPO.
    """

    name = "grpo"
    epochs: int = setting(1, check_int_at_least, "grpo_epochs", low=1)
    clip: float = setting(0.2, check_positive, "ppo_clip")
    scale_rewards: bool = setting(True, check_bool, "grpo_scale_rewards")


@dataclass(frozen=True)
class DPGConfig(Section):
    """DPG (forward KL by self-normalised importance weights).

    proposal : {"policy", "prior"}
        Weights pi*/q from policy samples, or pi*/pi0 from prior samples.
    """

    name = "dpg"
    proposal: str = setting("policy", check_choice, "dpg_proposal", options=("policy", "prior"))


@dataclass(frozen=True)
class DistillConfig(Section):
    """Distillation (forward KL from samples of pi*).

    source : {"exact", "rejection", "given"}
        Samples from the enumerated posterior, from exact rejection sampling (needs
        ``reward_max``), or from the ``sampler`` argument of ``train_policy``.
    reward_max : float or None
        An upper bound of the reward, for ``source="rejection"``.
    """

    name = "distill"
    source: str = setting("exact", check_choice, "distill_source", options=("exact", "rejection", "given"))
    reward_max: float | None = setting(None, check_finite_or_none, "reward_max")


@dataclass(frozen=True)
class VarGradConfig(Section):
    """Trajectory balance / VarGrad.

    log_z : {"learned", "batch"}
        A learned log Z per prompt (trajectory balance) or the batch mean (VarGrad).
    log_z_lr : float
        Learning rate of the learned log Z.
    """

    name = "vargrad"
    log_z: str = setting("learned", check_choice, "log_z", options=("learned", "batch"))
    log_z_lr: float = setting(0.05, check_positive, "log_z_lr")


@dataclass(frozen=True)
class KLControlConfig(Section):
    """Adaptive KL coefficient (Ziegler et al. 2019; ``kl_control.py``), off by default.

    target : float or None
        The KL(q || pi0) (nats, per sequence) the controller steers beta towards; None keeps beta
        fixed at the target's. The flat keyword is ``kl_target``.
    horizon : float
        In samples: beta moves by at most a factor 1 +- 0.2 n / horizon per step of n samples
        (Ziegler et al.'s 10000; ``kl_horizon``).

    Recorded in checkpoints and run folders only when set (``recorded_at_default``), so configs
    without it keep the fingerprints of earlier versions.
    """

    name = "kl_control"
    recorded_at_default = False
    target: float | None = setting(None, check_positive_or_none, "kl_target")
    horizon: float = setting(10000.0, check_positive, "kl_horizon")


@dataclass(frozen=True)
class DPOConfig(Section):
    """DPO, IPO and online DPO (``objectives/dpo.py``; pairs and fixed points in ``preferences.py``).

    judge : {"bradley_terry", "better"}
        How online DPO labels a pair of the policy's samples: "bradley_terry" takes the expectation
        over a label with P(a > b) = sigmoid(r_a - r_b) (fixed point pi*); "better" prefers the higher
        reward (TRL's OnlineDPOTrainer with a reward judge; q drifts towards pi0 on the best
        completions, not pi*); flat keyword ``dpo_judge``. DPO and IPO read their labels from
        ``train_policy(preferences=...)``.

    Recorded in checkpoints and run folders only when set (``recorded_at_default``).
    """

    name = "dpo"
    recorded_at_default = False
    judge: str = setting("bradley_terry", check_choice, "dpo_judge", options=("bradley_terry", "better"))


F_DIVERGENCES = ("forward_kl", "reverse_kl", "js", "tv", "chi2", "jeffreys")
BON_QUANTILES = ("exact", "prior")


@dataclass(frozen=True)
class FDPGConfig(Section):
    """f-DPG: an f-divergence D_f(pi* || q) by importance weights (``objectives/fdpg.py``).

    f_divergence : {"forward_kl", "reverse_kl", "js", "tv", "chi2", "jeffreys"}
        The generator (flat keyword ``f_divergence``); "js" (Go et al.'s recommendation) by default.
    proposal : {"policy", "prior"}
        Policy samples (ratio pi*/q) or prior samples (pi*/pi0, re-weighted to q); ``fdpg_proposal``.
    baseline : bool
        Subtract the leave-one-out mean of phi(u) per prompt (lower variance, same expectation) with
        policy samples; prior samples never use it (it made every generator diverge there).

    Recorded in checkpoints and run folders only when set (``recorded_at_default``).
    """

    name = "fdpg"
    recorded_at_default = False
    f_divergence: str = setting("js", check_choice, "f_divergence", options=F_DIVERGENCES)
    proposal: str = setting("policy", check_choice, "fdpg_proposal", options=("policy", "prior"))
    baseline: bool = setting(True, check_bool, "fdpg_baseline")


@dataclass(frozen=True)
class BoNConfig(Section):
    """Best-of-N distillation, BOND and vBoN (``objectives/bond.py``).

    n : int
        N of best-of-N (flat keyword ``bon_n``).
    quantile : {"exact", "prior"}
        The reward's law under pi0 per prompt: enumerated (exact BoN_N), or the empirical law of
        ``quantile_samples`` prior draws (``bon_quantile``).
    quantile_samples : int
        Prior draws per prompt for ``quantile="prior"`` (``bon_quantile_samples``).
    quantile_seed : int
        Seed of those draws' generator (``bon_quantile_seed``).
    proposal : {"policy", "prior"}
        BOND's samples (``bon_proposal``); vBoN always samples the policy.

    Recorded in checkpoints and run folders only when set (``recorded_at_default``).
    """

    name = "bon"
    recorded_at_default = False
    n: int = setting(4, check_int_at_least, "bon_n", low=1)
    quantile: str = setting("exact", check_choice, "bon_quantile", options=BON_QUANTILES)
    quantile_samples: int = setting(1024, check_int_at_least, "bon_quantile_samples", low=2)
    quantile_seed: int = setting(0, check_int_at_least, "bon_quantile_seed", low=0)
    proposal: str = setting("policy", check_choice, "bon_proposal", options=("policy", "prior"))


SECTIONS = (RLOOConfig, PPOConfig, GRPOConfig, DPGConfig, DistillConfig, VarGradConfig, KLControlConfig, DPOConfig,
            FDPGConfig, BoNConfig)

__all__ = ["RLOOConfig", "PPOConfig", "GRPOConfig", "DPGConfig", "DistillConfig", "VarGradConfig",
           "KLControlConfig", "DPOConfig", "FDPGConfig", "BoNConfig", "F_DIVERGENCES", "BON_QUANTILES", "SECTIONS",
           "Section"]
