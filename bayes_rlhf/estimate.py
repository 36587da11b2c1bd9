"""``Estimate``: a Monte Carlo estimate, its standard error and the draws behind it (ground floor).

The one result type of every sampled quantity: the sampled divergences (``diagnostics.sampled``),
the stochastic bounds on log Z (``samplers.bounds``; there ``side`` says which side of log Z the
estimate bounds) and the ELBO / EUBO of a policy.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Estimate:
    """A Monte Carlo estimate: ``value``, its standard error and the number of draws behind it.

    Attributes
    ----------
    value : float
    stderr : float
        Monte Carlo standard error (inf from one draw, NaN where it is undefined).
    num_samples : int
        Draws (or i.i.d. terms) the estimate averages.
    side : {"lower", "upper"} or None
        For a stochastic bound on log Z, which side it bounds; None otherwise (or built by hand).
    """

    value: float
    stderr: float
    num_samples: int
    side: str | None = None

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        """``value -+ z * stderr`` (a normal-approximation confidence interval)."""
        return self.value - z * self.stderr, self.value + z * self.stderr

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def num(self) -> int:
        """Deprecated name of ``num_samples`` (``BoundEstimate.num``)."""
        warnings.warn("Estimate.num is deprecated; use Estimate.num_samples", DeprecationWarning, stacklevel=2)
        return self.num_samples

    @classmethod
    def of_terms(cls, terms: torch.Tensor, side: str | None = None) -> "Estimate":
        """The mean of i.i.d. ``terms`` [n] with its standard error std / sqrt(n) (inf for n = 1)."""
        terms = terms.double().reshape(-1)
        n = terms.numel()
        se = float(terms.std(unbiased=True) / math.sqrt(n)) if n > 1 else math.inf
        return cls(float(terms.mean()), se, n, side)


#: the name ``samplers.bounds`` used for the same type
BoundEstimate = Estimate
