"""Diagnostics: how far a policy or sampler is from the target posterior.

Exact divergences on enumerable models (``compare``, ``position_kl``, ``token_kl``), sampled
estimates with standard errors on large ones (``reverse_kl``, ``forward_kl``,
``importance_log_z``), importance-weight diagnostics (Kish ESS, PSIS k-hat), the reward-KL
frontier, exact moments of the k1/k2/k3 KL estimators and their gradients (``kl_estimators``),
and conversion to ArviZ ``InferenceData``.
"""

from bayes_rlhf.diagnostics.exact import Comparison, compare, policy_log_probs, position_kl, token_kl
from bayes_rlhf.diagnostics.frontier import (FrontierPoint, best_of_n_points, beta_grid, policy_point,
                                             posterior_frontier, retilt, sampler_point, table_rows)
from bayes_rlhf.diagnostics.kl_estimators import KLEstimatorReport, kl_estimator_lab, kl_estimators
from bayes_rlhf.diagnostics.inference_data import load_inference_data, save_inference_data, to_inference_data
from bayes_rlhf.diagnostics.sampled import Estimate, ForwardKL, ReverseKL, forward_kl, importance_log_z, reverse_kl
from bayes_rlhf.diagnostics.weights import (EmptySamplesError, WeightDiagnostics, kish_ess, psis_khat,
                                            weight_diagnostics)

__all__ = [
    "Comparison", "compare", "policy_log_probs", "token_kl", "position_kl",
    "FrontierPoint", "posterior_frontier", "policy_point", "best_of_n_points", "sampler_point", "retilt",
    "beta_grid", "table_rows",
    "to_inference_data", "save_inference_data", "load_inference_data",
    "kl_estimators", "kl_estimator_lab", "KLEstimatorReport",
    "Estimate", "ReverseKL", "ForwardKL", "reverse_kl", "forward_kl", "importance_log_z",
    "EmptySamplesError", "WeightDiagnostics", "weight_diagnostics", "psis_khat", "kish_ess",
]
