"""Adaptive KL control: beta moved each step towards a KL(q || pi0) target (Ziegler et al. 2019).

``TrainerConfig(kl_target=0.5, kl_horizon=10000)`` runs the proportional controller of Ziegler et
al. (2019), *Fine-Tuning Language Models from Human Preferences*, section 2.2::

    beta_1    = target.beta
    step t:     loss, history row (column "beta") and estimates at beta_t
    KL_t      = mean over the step's policy samples of log q(x) - log pi0(x)   (k1, per sequence)
    e_t       = clip((KL_t - kl_target) / kl_target, -0.2, 0.2)
    beta_t+1  = beta_t * (1 + e_t * n_t / kl_horizon)                        n_t: the step's policy samples

What it converges to: the update is stationary where E[clip(e_t)] = 0, i.e. (up to the clip's
effect on a noisy KL_t) where KL(q || pi0) = kl_target for the current policy q. The loss pulls q
towards pi*_beta; when q has reached it, KL(pi*_beta || pi0) = kl_target, whose beta is
``beta_for_kl(target, prompts, kl_target)`` (prompts averaged the same way). Along the way q lags
behind pi*_beta_t, so beta_t is a noisy estimate of that beta, not the beta itself.

What works with it: every objective whose samples are the policy's or the prior's and whose loss
reads ``PolicyBatch.beta`` (rloo, ppo, grpo, dpg, vargrad). Refused with a ConfigError: objectives
whose samples are draws of pi* at the target's beta (sources "exact", "rejection", "given", i.e.
distillation), which no change of beta reaches, and a ``SandwichEvaluator``, whose posterior
samples are fixed at the target's beta. An exact evaluator is re-tilted to beta_t at each
evaluation (``ExactEvaluator.evaluate``: the same table, no model calls), so ``kl_q_posterior`` is
KL(q || pi*_beta_t).

Resume: beta_t+1 is a function of the last history row (beta_t and KL_t, stored exactly in the
checkpoint's JSON), so a resumed run continues from the beta the uninterrupted run would have had.
"""

from __future__ import annotations

import dataclasses
import math

from bayes_rlhf.errors import ConfigError
from bayes_rlhf.variational.guards import TrainingDivergedError

#: the controller's clip of the relative KL error (Ziegler et al.)
ERROR_CLIP = 0.2
#: sample sources whose draws are pi* at the target's beta, which the controller cannot move
FIXED_BETA_SOURCES = ("exact", "rejection", "given")


def kl_error(kl: float, kl_target: float) -> float:
    """e = clip((kl - kl_target) / kl_target, -0.2, 0.2)."""
    return min(max((kl - kl_target) / kl_target, -ERROR_CLIP), ERROR_CLIP)


def update_beta(beta: float, kl: float, num_samples: int, kl_target: float, kl_horizon: float) -> float:
    """The next beta, ``beta * (1 + kl_error(kl, kl_target) * num_samples / kl_horizon)``."""
    return beta * (1.0 + kl_error(kl, kl_target) * num_samples / kl_horizon)


def check_kl_control(settings, source, objective: str) -> None:
    """ConfigError when the controller is on for an objective whose samples are pi* at a fixed beta.

    ``settings`` is a ``KLControlConfig``, ``source`` the objective's ``Source``.
    """
    if settings.target is not None and source.kind in FIXED_BETA_SOURCES:
        raise ConfigError(f"TrainerConfig.kl_target needs an objective trained on policy or prior samples; "
                          f"objective={objective!r} draws from pi* at the target's beta ({source.kind!r} "
                          "samples), which the controller cannot move. Use rloo, ppo, grpo, dpg or vargrad, "
                          "or set kl_target=None and choose beta with br.beta_for_kl")


class AdaptiveKL:
    """The controller of one run: the step's batch size n and the settings, applied to the run's target.

    Parameters
    ----------
    settings : KLControlConfig
        With ``target`` set.
    num_samples : int
        n_t: policy samples per step, summed over processes.
    """

    def __init__(self, settings, num_samples: int):
        self.kl_target, self.kl_horizon, self.num_samples = settings.target, settings.horizon, int(num_samples)

    def next_beta(self, row: dict) -> float:
        """beta_t+1 from a history row holding beta_t ("beta") and KL_t ("kl_prior")."""
        kl = row["kl_prior"]
        if kl is None or not math.isfinite(kl):
            raise TrainingDivergedError(row["step"], f"the KL(q || pi0) estimate is {kl}; the KL controller "
                                                     "cannot move beta from it")
        return update_beta(row["beta"], kl, self.num_samples, self.kl_target, self.kl_horizon)

    def after_step(self, run, row: dict) -> None:
        """Set ``run.target``'s beta to beta_t+1 (the row holds beta_t)."""
        run.target = dataclasses.replace(run.target, beta=self.next_beta(row))

    def resume(self, run, rows: list[dict]) -> None:
        """Continue from a checkpoint's history: ``run.target``'s beta becomes the last row's next beta."""
        if rows:
            run.target = dataclasses.replace(run.target, beta=self.next_beta(rows[-1]))


def make_kl_control(config, num_prompts: int, num_processes: int, fixed_beta_evaluator) -> AdaptiveKL | None:
    """The run's controller (None when ``config.kl_control.target`` is None), checked before any work.

    n_t = samples_per_prompt * prompts per step * processes; ``kl_horizon`` must exceed 0.2 n_t,
    else a step of e_t = -0.2 could make beta <= 0.
    """
    settings = config.kl_control
    if settings.target is None:
        return None
    if fixed_beta_evaluator is not None:
        raise ConfigError("TrainerConfig.kl_target with an evaluator that holds only at the target's own beta "
                          "(follows_beta False, e.g. a SandwichEvaluator, whose samples are of pi* at that beta), "
                          "which the controller changes; attach exact posteriors (evaluator=True) or no evaluator")
    per_step = config.prompts_per_step if config.prompts_per_step is not None else num_prompts
    n = config.samples_per_prompt * min(per_step, num_prompts) * num_processes
    if not settings.horizon > ERROR_CLIP * n:
        raise ConfigError(f"TrainerConfig.kl_horizon={settings.horizon:g} must exceed {ERROR_CLIP} x the {n} "
                          f"policy samples of a step ({ERROR_CLIP * n:g}), or one step could make beta <= 0; "
                          "raise kl_horizon (Ziegler et al. use 10000)")
    return AdaptiveKL(settings, n)


__all__ = ["AdaptiveKL", "kl_error", "update_beta", "check_kl_control", "make_kl_control", "ERROR_CLIP"]
