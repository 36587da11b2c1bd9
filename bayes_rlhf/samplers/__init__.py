"""Samplers of the posterior pi* = pi0 exp(r / beta) / Z: importance sampling, best-of-N,
quasi-rejection and token-level SMC, their resampling schemes and twists, and bounds on log Z.
Every sampler returns ``WeightedSamples``.
"""

from bayes_rlhf.samplers.constrained import LocallyConstrained
from bayes_rlhf.samplers.constraints import NextTokenConstraint, PrefixConstraint, TokenMask, as_constraint
from bayes_rlhf.samplers.best_of_n import (best_of_n, best_of_n_kl, best_of_n_kl_bound, best_of_n_log_probs,
                                           best_of_n_mean_reward)
from bayes_rlhf.samplers.bounds import (BoundEstimate, KLSandwich, kl_sandwich, log_z_lower_bound, lower_bound,
                                        upper_bound)
from bayes_rlhf.samplers.importance import importance_sample, sampling_importance_resampling
from bayes_rlhf.samplers.quasi_rejection import quasi_rejection_log_probs, quasi_rejection_sample
from bayes_rlhf.samplers.resampling import (RESAMPLERS, get_resampler, multinomial, residual, stratified,
                                            systematic)
from bayes_rlhf.samplers.exact_proposal import ExactProposal
from bayes_rlhf.samplers.proposal_protocol import Proposal, Proposed, StepView
from bayes_rlhf.samplers.proposals import LMProposal, PriorProposal, as_proposal
from bayes_rlhf.samplers.twisted_proposal import TwistedProposal
from bayes_rlhf.samplers.smc import SMC, smc
from bayes_rlhf.samplers.smc_state import SMCConfig, SMCState
from bayes_rlhf.samplers.twist_learning import CTLConfig, ContrastSet, ctl_surrogate, fit_twist_ctl
from bayes_rlhf.samplers.learned_twist import LearnedTwist, exact_prefix_values, fit_twist
from bayes_rlhf.samplers.twists import ExactTwist, PrefixPotential, Twist
from bayes_rlhf.samplers.weighted import SMCHistory, WeightedSamples, kish_ess

__all__ = [
    "WeightedSamples", "SMCHistory", "kish_ess",
    "importance_sample", "sampling_importance_resampling",
    "best_of_n", "best_of_n_log_probs", "best_of_n_kl", "best_of_n_kl_bound", "best_of_n_mean_reward",
    "quasi_rejection_sample", "quasi_rejection_log_probs",
    "smc", "SMC", "SMCConfig", "SMCState",
    "Proposal", "Proposed", "StepView", "PriorProposal", "LMProposal", "ExactProposal", "TwistedProposal",
    "as_proposal", "LocallyConstrained", "TokenMask", "NextTokenConstraint", "PrefixConstraint", "as_constraint",
    "Twist", "ExactTwist", "PrefixPotential", "LearnedTwist", "fit_twist", "exact_prefix_values",
    "fit_twist_ctl", "CTLConfig", "ContrastSet", "ctl_surrogate",
    "multinomial", "stratified", "systematic", "residual", "RESAMPLERS", "get_resampler",
    "BoundEstimate", "KLSandwich", "lower_bound", "upper_bound", "log_z_lower_bound", "kl_sandwich",
]
