"""The convex dual of the I-projection, solved by Newton's method with a backtracking line search.

The I-projection of pi0 onto ``{q : mean_c E_q(.|c)[phi] = m}`` (one lambda shared by the P
prompts, as in conditional GDC) is ``pi0 exp(lambda . phi) / Z_c`` with lambda the minimiser of::

    g(lambda) = mean_c log Z_c(lambda) - lambda . m           (convex)
    grad g    = mean_c E_lambda[phi | c] - m                  (the moment error)
    hess g    = mean_c Cov_lambda[phi | c]                    (positive semi-definite)

Pseudocode::

    check m is inside the reachable set (else UnreachableError naming it)
    lambda = 0
    repeat until max |grad| <= tol:               (features scaled to range ~1)
        delta = -pinv(hess) grad              # least squares: collinear features are fine
        shrink delta so that no log-mass changes by more than MAX_STEP nats (else one step can
        jump to where the tilt sits on a few atoms and the Hessian underflows); -grad if not descent
        s = 1; halve s until g(lambda + s delta) <= g(lambda) + 1e-4 s grad . delta
               (or, once g is flat to rounding, until |grad| shrinks)
        lambda += s delta

A moment is reachable iff it lies in the relative interior of the prompt-averaged convex hull
of the feature vectors on the support: iff it is a mean with every atom's weight > 0. For one
feature that is the open interval (mean_c min phi, mean_c max phi); for several, a small linear
programme over the distinct feature vectors decides it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from bayes_rlhf.control.tables import AtomTable, Tilt, UnreachableError, feature_ranges, tilt
from bayes_rlhf.errors import ConfigError

#: the most a step may change any atom's log-mass (nats), so no step jumps into a region where the
#: tilt has collapsed onto a few atoms and the Hessian underflows
MAX_STEP = 8.0
#: an LP margin below this (the least atom weight of the best representation) counts as the boundary
INTERIOR_MARGIN = 1e-10


@dataclass(frozen=True)
class DualSolution:
    """lambda [d], the tilt it gives, the Newton iterations and the final max moment error."""

    coefficients: torch.Tensor
    tilt: Tilt
    iterations: int
    max_error: float


def _describe(names: Sequence[str], ranges) -> str:
    return ", ".join(f"{n} in ({lo:.6g}, {hi:.6g})" if hi > lo else f"{n} = {lo:.6g} (constant on the support)"
                     for n, (lo, hi) in zip(names, ranges))


def check_reachable(table: AtomTable, moments: torch.Tensor, names: Sequence[str]) -> list[tuple[float, float]]:
    """The per-feature reachable ranges; ``UnreachableError`` naming them if ``moments`` [d] is outside."""
    ranges = feature_ranges(table)
    what = f"reachable moments (prompt-averaged over the support): {_describe(names, ranges)}"
    for n, m, (lo, hi) in zip(names, moments.tolist(), ranges):
        inside = lo < m < hi if hi > lo else abs(m - lo) <= 1e-12 * max(1.0, abs(lo))
        if not inside:
            raise UnreachableError(f"moment {m:.6g} for feature {n!r} cannot be reached: {what}. Choose moments "
                                   "strictly inside these ranges (the ends need lambda = +-inf).", ranges)
    if table.dim > 1 and _lp_margin(table, moments) <= INTERIOR_MARGIN:
        raise UnreachableError(f"the moments {moments.tolist()} lie inside each feature's range but not jointly: "
                               "no distribution on the support has them all (they are outside, or on the edge "
                               f"of, the convex hull of the feature vectors). Per feature, {what}.", ranges)
    return ranges


def _lp_margin(table: AtomTable, moments: torch.Tensor) -> float:
    """max t such that m = mean_g sum_k w_gk phi_gk with w_g on the simplex and every w_gk >= t,
    over the distinct feature vectors of each group (w = t + u, u >= 0); 0 when infeasible."""
    from scipy.optimize import linprog
    from scipy.sparse import lil_matrix

    groups = [torch.unique(table.features[table.rows(g)], dim=0).numpy() for g in range(table.num_groups)]
    n_u = sum(len(f) for f in groups)
    P, d = table.num_groups, table.dim
    A = lil_matrix((P + d, n_u + 1))
    b = np.concatenate([np.ones(P), moments.numpy()])
    col = 0
    for g, f in enumerate(groups):
        k = len(f)
        A[g, col: col + k] = 1.0
        A[g, n_u] = k
        A[P:, col: col + k] = f.T / P
        A[P:, n_u] += f.sum(0)[:, None] / P
        col += k
    c = np.zeros(n_u + 1)
    c[-1] = -1.0
    res = linprog(c, A_eq=A.tocsr(), b_eq=b, bounds=[(0, None)] * (n_u + 1), method="highs")
    return float(res.x[-1]) if res.status == 0 else 0.0


def _objective(t: Tilt, lam: torch.Tensor, moments: torch.Tensor) -> float:
    return float(t.log_z.mean() - lam @ moments)


def _direction(t: Tilt, table: AtomTable, grad: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Newton's step in the scaled coordinates lambda_i / scale_i (features of range ~1), shortened so
    that no atom's log-mass changes by more than MAX_STEP nats; the gradient step where it is not a
    descent direction (a Hessian lost to rounding where the tilt has collapsed onto a few atoms)."""
    g = (grad / scale).numpy()
    hess = t.covariance(table).numpy() / np.outer(scale.numpy(), scale.numpy())
    delta = np.linalg.lstsq(hess, -g, rcond=1e-13)[0]  # least squares: collinear features are fine
    if not float(delta @ g) < 0:
        delta = -g
    delta *= min(1.0, MAX_STEP / max(float(np.abs(delta).sum()), 1e-300))
    return torch.from_numpy(delta) / scale


def solve_dual(table: AtomTable, moments: torch.Tensor, tol: float = 1e-10, max_iter: int = 100) -> DualSolution:
    """lambda with ``max |mean_c E_lambda[phi | c] - m| <= tol`` (call ``check_reachable`` first).

    Parameters
    ----------
    table : AtomTable
        P groups of atoms, features [N, d].
    moments : Tensor [d]
    tol : float
        On the moment error, in the features' units.

    Raises
    ------
    ConfigError
        No convergence within ``max_iter`` steps (moments too close to the boundary).
    """
    moments = moments.double()
    spread = table.features.max(0).values - table.features.min(0).values
    scale = torch.where(spread > 0, spread, 1.0)  # phi_i / scale_i has range 1
    lam = torch.zeros(table.dim, dtype=torch.float64)
    t = tilt(table, lam)
    value = _objective(t, lam, moments)
    for it in range(max_iter + 1):
        grad = t.means.mean(0) - moments
        err = float(grad.abs().max())
        if err <= tol:
            return DualSolution(lam, t, it, err)
        if it == max_iter:
            break
        delta = _direction(t, table, grad, scale)
        slope = float(grad @ delta)
        step = 1.0
        while step > 1e-12:
            cand = lam + step * delta
            ct = tilt(table, cand)
            cv = _objective(ct, cand, moments)
            flat = abs(cv - value) <= 1e-13 * max(1.0, abs(value))  # g is flat to rounding near the optimum
            if cv <= value + 1e-4 * step * slope or (flat and float((ct.means.mean(0) - moments).abs().max()) < err):
                break
            step /= 2
        else:
            break
        lam, t, value = cand, ct, cv
    raise ConfigError(f"the moment dual did not converge in {max_iter} steps (max moment error {err:.3g}, "
                      f"lambda = {lam.tolist()}): the moments are too close to the edge of the reachable range; "
                      "move them inwards or raise max_iter")


def kl_to_prior(sol: DualSolution, moments: torch.Tensor) -> float:
    """Prompt-averaged KL(pi* || pi0) = lambda . mean_c mu_c - mean_c log Z_c (nats, >= 0)."""
    value = float(sol.coefficients @ sol.tilt.means.mean(0) - sol.tilt.log_z.mean())
    return max(0.0, value) if math.isfinite(value) else value
