"""The amortised variational policy: fit q(x | c) to pi* = pi0 exp(r / beta) / Z by RL (reverse KL),
DPG or distillation (forward KL), or trajectory balance; measure it against the exact posterior.

Each objective is one record in ``objectives`` (its loss, sample source and needs); ``train_policy``
runs the one loop that reads it."""

from bayes_rlhf.variational import objectives
from bayes_rlhf.variational.config import TrainerConfig
from bayes_rlhf.variational.history import TrainingHistory
from bayes_rlhf.variational.objectives import (OBJECTIVE_NAMES, OBJECTIVES, Objective, ObjectiveOutput, PolicyBatch,
                                               register_objective)
from bayes_rlhf.variational.evaluation import Evaluator, ExactEvaluator, as_evaluator
from bayes_rlhf.variational.preferences import Preferences, sample_preferences
from bayes_rlhf.variational.sandwich import SandwichEvaluator
from bayes_rlhf.variational.settings import (DistillConfig, DPGConfig, GRPOConfig, PPOConfig, RLOOConfig,
                                             VarGradConfig)
from bayes_rlhf.variational.sources import Source
from bayes_rlhf.variational.trainer import TrainingDivergedError, train_policy

__all__ = ["train_policy", "TrainerConfig", "TrainingHistory", "TrainingDivergedError", "objectives",
           "OBJECTIVES", "OBJECTIVE_NAMES", "PolicyBatch", "ObjectiveOutput", "SandwichEvaluator", "Objective",
           "Evaluator", "ExactEvaluator", "as_evaluator",
           "register_objective", "Source", "RLOOConfig", "PPOConfig", "GRPOConfig", "DPGConfig", "DistillConfig",
           "VarGradConfig", "Preferences", "sample_preferences"]
