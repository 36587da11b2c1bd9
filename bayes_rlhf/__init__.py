"""bayes_rlhf: KL-regularised RL fine-tuning of language models as Bayesian inference.

    J(q) = E_q[r] - beta KL(q || pi0) = beta (log Z - KL(q || pi*)),  pi* = pi0 exp(r / beta) / Z
"""

from bayes_rlhf.diagnostics import Comparison, compare
from bayes_rlhf.errors import (BayesRLHFError, ConfigError, ModelLoadError, NoMassError, PromptError,
                               RewardError, SpaceTooLargeError, TokenizerMismatchError)
from bayes_rlhf.exact import ExactPosterior, RejectionResult, exact_posterior, exact_rejection_sample
from bayes_rlhf.models import DEFAULT_PROMPTS, CausalLM, Completions, LMState, default_model, load_model
from bayes_rlhf.rewards import ClassifierReward, Constraint, TokenReward, WeightedSum, evaluate_reward
from bayes_rlhf.target import Target

__version__ = "0.1.0"

__all__ = [
    "CausalLM", "LMState", "Completions", "load_model", "default_model", "DEFAULT_PROMPTS",
    "TokenReward", "ClassifierReward", "Constraint", "WeightedSum", "evaluate_reward",
    "Target", "ExactPosterior", "exact_posterior", "exact_rejection_sample", "RejectionResult",
    "Comparison", "compare",
    "BayesRLHFError", "ConfigError", "ModelLoadError", "PromptError", "RewardError",
    "SpaceTooLargeError", "TokenizerMismatchError", "NoMassError",
]
