"""Diagnostics: how far a policy or sampler is from the target posterior."""

from bayes_rlhf.diagnostics.exact import Comparison, compare

__all__ = ["Comparison", "compare"]
