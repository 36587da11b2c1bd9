"""The amortised variational policy: fit q(x | c) to pi* = pi0 exp(r / beta) / Z by RL (reverse KL),
DPG or distillation (forward KL), or trajectory balance; measure it against the exact posterior."""

from bayes_rlhf.variational import objectives
from bayes_rlhf.variational.config import OBJECTIVE_NAMES, TrainerConfig
from bayes_rlhf.variational.history import TrainingHistory
from bayes_rlhf.variational.objectives import OBJECTIVES, ObjectiveOutput, PolicyBatch
from bayes_rlhf.variational.sandwich import SandwichEvaluator
from bayes_rlhf.variational.trainer import TrainingDivergedError, train_policy

__all__ = ["train_policy", "TrainerConfig", "TrainingHistory", "TrainingDivergedError", "objectives",
           "OBJECTIVES", "OBJECTIVE_NAMES", "PolicyBatch", "ObjectiveOutput", "SandwichEvaluator"]
