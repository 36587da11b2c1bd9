"""bayes_rlhf: KL-regularised RL fine-tuning of language models as Bayesian inference.

    J(q) = E_q[r] - beta KL(q || pi0) = beta (log Z - KL(q || pi*)),  pi* = pi0 exp(r / beta) / Z
"""

from bayes_rlhf.control import (BetaChoice, MomentFit, MomentReward, UnreachableError, beta_for_kl, beta_for_reward,
                                moment_target)
from bayes_rlhf.diagnostics import (Comparison, EmptySamplesError, Estimate, FrontierPoint, WeightDiagnostics,
                                    compare, forward_kl, importance_log_z, load_inference_data, policy_point,
                                    position_kl, posterior_frontier, psis_khat, reverse_kl, save_inference_data,
                                    to_inference_data, token_kl, weight_diagnostics)
from bayes_rlhf.errors import (BayesRLHFError, ConfigError, ConstraintMismatchError, ModelLoadError, NoMassError,
                               OutputDirError, PromptError, RewardError, SpaceTooLargeError, TokenizerMismatchError)
from bayes_rlhf.exact import ExactPosterior, RejectionResult, exact_posterior, exact_rejection_sample
from bayes_rlhf.models import DEFAULT_PROMPTS, CausalLM, Completions, LMState, Vocabulary, load_model
from bayes_rlhf.demo import default_model, demo_target
from bayes_rlhf.diagnostics.run_dir import RunDirError, load_run, save_run
from bayes_rlhf.rewards import (BradleyTerryConfig, BradleyTerryReward, ClassifierReward, Constraint, TokenReward,
                                WeightedSum, evaluate_reward)
from bayes_rlhf.rewards.bradley_terry import dpo_loss
from bayes_rlhf.samplers import (CTLConfig, ExactTwist, LearnedTwist, LocallyConstrained, NextTokenConstraint,
                                 PrefixConstraint, PrefixPotential, SMCConfig, TokenMask, TwistedProposal,
                                 WeightedSamples, best_of_n, best_of_n_kl, best_of_n_kl_bound, best_of_n_log_probs,
                                 fit_twist, fit_twist_ctl, get_resampler, importance_sample, kl_sandwich,
                                 log_z_lower_bound, lower_bound, multinomial, quasi_rejection_log_probs,
                                 quasi_rejection_sample, residual, sampling_importance_resampling, smc, stratified,
                                 systematic, upper_bound)
from bayes_rlhf.target import Target
from bayes_rlhf.variational import (Preferences, SandwichEvaluator, TrainerConfig, TrainingDivergedError,
                                    TrainingHistory, objectives, sample_preferences, train_policy)
from bayes_rlhf.variational.objectives import bon_posterior, bon_target

__version__ = "0.1.0"

# matplotlib and pyro load on first use, so `import bayes_rlhf` and the CLI start fast
_LAZY = {"plots": ("bayes_rlhf.plots", None), "ppl": ("bayes_rlhf.ppl", None),
         "write_report": ("bayes_rlhf.report", "write_report")}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'bayes_rlhf' has no attribute {name!r}")
    import importlib

    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    return module if attr is None else getattr(module, attr)

__all__ = [
    # models, rewards, target
    "CausalLM", "LMState", "Completions", "Vocabulary", "load_model", "default_model", "demo_target",
    "DEFAULT_PROMPTS",
    "TokenReward", "ClassifierReward", "Constraint", "WeightedSum", "evaluate_reward", "Target",
    "BradleyTerryReward", "BradleyTerryConfig", "dpo_loss",
    # controlling the target: moments (I-projection) and KL / reward budgets
    "moment_target", "MomentReward", "MomentFit", "beta_for_kl", "beta_for_reward", "BetaChoice",
    "UnreachableError",
    # exact
    "ExactPosterior", "exact_posterior", "exact_rejection_sample", "RejectionResult",
    # samplers
    "WeightedSamples", "importance_sample", "sampling_importance_resampling", "best_of_n",
    "best_of_n_log_probs", "best_of_n_kl", "best_of_n_kl_bound", "quasi_rejection_sample",
    "quasi_rejection_log_probs", "smc", "SMCConfig", "ExactTwist", "PrefixPotential", "LearnedTwist",
    "LocallyConstrained", "TokenMask", "NextTokenConstraint", "PrefixConstraint", "TwistedProposal",
    "fit_twist", "fit_twist_ctl", "CTLConfig", "multinomial", "stratified", "systematic", "residual", "get_resampler",
    "lower_bound", "upper_bound", "kl_sandwich", "log_z_lower_bound", "ppl",
    # variational policy
    "train_policy", "TrainerConfig", "TrainingHistory", "TrainingDivergedError", "SandwichEvaluator",
    "objectives", "Preferences", "sample_preferences", "bon_target", "bon_posterior",
    # diagnostics and reports
    "Comparison", "compare", "reverse_kl", "forward_kl", "importance_log_z", "token_kl", "position_kl",
    "Estimate", "WeightDiagnostics", "weight_diagnostics", "psis_khat", "FrontierPoint",
    "posterior_frontier", "policy_point", "to_inference_data", "save_inference_data",
    "load_inference_data", "save_run", "load_run", "write_report", "RunDirError", "plots",
    # errors
    "BayesRLHFError", "ConfigError", "ModelLoadError", "PromptError", "RewardError",
    "SpaceTooLargeError", "TokenizerMismatchError", "NoMassError", "OutputDirError", "EmptySamplesError",
    "ConstraintMismatchError",
]
