"""Exact inference: enumeration of the completion tree, the exact posterior, exact rejection."""

from bayes_rlhf.exact.enumerate import count_completions, enumerate_completions
from bayes_rlhf.exact.posterior import ExactPosterior
from bayes_rlhf.exact.rejection import RejectionResult, exact_rejection_sample
from bayes_rlhf.exact.from_target import exact_posterior

__all__ = ["ExactPosterior", "exact_posterior", "exact_rejection_sample", "RejectionResult",
           "enumerate_completions", "count_completions"]
