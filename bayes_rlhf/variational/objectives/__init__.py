"""Losses that fit a policy q to pi* = pi0 exp(r / beta) / Z, one module and one record per objective.

Every loss is measured in nats (rewards enter as r / beta), so its gradient estimates the gradient
of a divergence to pi*, whatever the reward's scale::

    rloo     reverse KL, REINFORCE with a leave-one-out baseline         policy samples
    ppo      reverse KL, clipped ratio and GAE from a value head          policy samples, value head, epochs
    grpo     TRL's GRPO (biased: measures how far its fixed point is)     policy samples, epochs
    dpg      forward KL, self-normalised importance weights               policy or prior samples
    distill  forward KL from samples of pi*                               exact, rejection or given samples
    vargrad  trajectory balance (learned log Z per prompt) or VarGrad     policy samples, learned log Z
    dpo      Bradley-Terry loss of beta log q / pi0 on preference pairs    train_policy(preferences=...)
    ipo      squared loss of log-ratio margins (fixed point not pi*)       train_policy(preferences=...)
    online_dpo  DPO on pairs of q's samples labelled by a judge            policy samples
    fdpg     f-divergence D_f(pi* || q) (forward/reverse KL, JS, TV,       policy or prior samples
             chi2, Jeffreys), self-normalised importance weights
    bond     Jeffreys divergence to best-of-N (BoN_N = pi0 e^{r_N},       policy or prior samples, BoN target
             r_N from the reward's quantile under pi0), fixed point BoN_N
    vbon     reverse KL(q || BoN_N): RLOO with reward r_N, beta 1          policy samples, BoN target

``OBJECTIVES`` maps ``TrainerConfig.objective`` names to their ``Objective`` records (``base.py``
says what a record declares); ``register_objective`` adds one. A record is called like a loss,
``rloo_loss(batch, config)``.
"""

from __future__ import annotations

from bayes_rlhf._checks import did_you_mean
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.logweights import group_softmax  # noqa: F401 (the weights DPG and distillation use)
from bayes_rlhf.variational.objectives.base import (BoundObjective, Objective, ObjectiveOutput, PolicyBatch, k3_kl,
                                                    weighted_nll)
from bayes_rlhf.variational.objectives.bond import bon_posterior, bon_target, bond_loss, vbon_loss
from bayes_rlhf.variational.objectives.distill import distill_loss
from bayes_rlhf.variational.objectives.dpo import dpo_objective, ipo_objective, online_dpo_objective
from bayes_rlhf.variational.objectives.dpg import dpg_loss
from bayes_rlhf.variational.objectives.fdpg import fdpg_loss
from bayes_rlhf.variational.objectives.grpo import GRPO_EPS, group_relative_advantages, grpo_loss
from bayes_rlhf.variational.objectives.ppo import gae, ppo_loss
from bayes_rlhf.variational.objectives.rloo import leave_one_out_advantages, rloo_loss
from bayes_rlhf.variational.objectives.vargrad import vargrad_loss

#: name -> Objective, the built-in objectives first
OBJECTIVES: dict[str, Objective] = {o.name: o for o in (rloo_loss, ppo_loss, dpg_loss, distill_loss, vargrad_loss,
                                                          grpo_loss, dpo_objective, ipo_objective,
                                                          online_dpo_objective, fdpg_loss, bond_loss, vbon_loss)}
#: the built-in objectives' names
OBJECTIVE_NAMES = tuple(OBJECTIVES)


def register_objective(objective: Objective) -> Objective:
    """Make ``objective`` available as ``TrainerConfig(objective=objective.name)``; returns it.

    A name already taken by another record is a ConfigError (a built-in cannot be replaced).
    """
    if not isinstance(objective, Objective):
        raise ConfigError(f"register_objective takes an Objective record, got {type(objective).__name__}")
    if OBJECTIVES.get(objective.name, objective) is not objective:
        raise ConfigError(f"an objective named {objective.name!r} is registered already; choose another name")
    OBJECTIVES[objective.name] = objective
    return objective


def get_objective(name: str) -> Objective:
    """The record registered as ``name`` (ConfigError naming the registered ones otherwise)."""
    if not isinstance(name, str) or name not in OBJECTIVES:
        raise ConfigError(f"TrainerConfig.objective must be one of {list(OBJECTIVES)}, got {name!r}"
                          f"{did_you_mean(name, OBJECTIVES) if isinstance(name, str) else ''}")
    return OBJECTIVES[name]


__all__ = ["PolicyBatch", "ObjectiveOutput", "Objective", "BoundObjective", "OBJECTIVES", "OBJECTIVE_NAMES",
           "register_objective", "get_objective", "rloo_loss", "ppo_loss", "dpg_loss", "distill_loss", "vargrad_loss",
           "grpo_loss", "dpo_objective", "ipo_objective", "online_dpo_objective", "leave_one_out_advantages",
           "group_relative_advantages", "group_softmax", "gae", "k3_kl", "weighted_nll", "GRPO_EPS", "fdpg_loss",
           "bond_loss", "vbon_loss", "bon_target", "bon_posterior"]
