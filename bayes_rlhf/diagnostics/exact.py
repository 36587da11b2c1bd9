"""Exact comparison of a policy q with the enumerated posterior pi*.

All sums run over the posterior's table; q's mass outside it (``q_outside``) makes
KL(q || pi*) and KL(q || pi0) infinite, leaves E_q[r] undefined (NaN: the reward of completions
outside the table is not known; a partial sum is never reported) and counts fully in the total
variation. To compare such a policy on the target's support, restrict it first
(``policy.with_support(prior)``)::

    KL(q || pi*)  = sum_x q log(q / pi*)
    KL(pi* || q)  = sum_x pi* log(pi* / q)
    TV            = (sum_x |q - pi*| + q_outside) / 2
    J(q)          = E_q[r] - beta KL(q || pi0) = beta (log Z - KL(q || pi*))
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from bayes_rlhf.errors import TokenizerMismatchError
from bayes_rlhf.exact.posterior import ExactPosterior
from bayes_rlhf.models.causal_lm import CausalLM


@dataclass(frozen=True)
class Comparison:
    """Exact divergences between a policy q and pi* (nats) and q's RL objective."""

    kl_q_posterior: float
    kl_posterior_q: float
    total_variation: float
    objective: float
    optimal_objective: float
    mean_reward: float
    kl_q_prior: float
    q_outside: float

    def as_dict(self) -> dict:
        return asdict(self)


def policy_log_probs(policy: CausalLM, posterior: ExactPosterior, batch_size: int = 1024,
                     progress: bool = False) -> torch.Tensor:
    """log q(x) [K] (float64) for every completion in the posterior's table.

    When the policy's own completion tree is the table (same tokenizer and support), it is
    walked like the prior's (one forward per prefix); otherwise (e.g. a top-k prior) the
    table's K completions are scored as whole sequences.
    """
    from bayes_rlhf.errors import SpaceTooLargeError
    from bayes_rlhf.exact.enumerate import enumerate_completions

    if not policy.vocabulary.same_as(posterior.vocabulary):
        raise TokenizerMismatchError("the policy's tokenizer differs from the prior's; compare policies "
                                     "fine-tuned from the same base model (same vocabulary and EOS)")
    T = posterior.completion_ids.shape[1]
    try:
        ids, mask, lq = enumerate_completions(policy, posterior.prompt, T, progress=progress,
                                              max_completions=2 * posterior.num_completions + 1)
    except SpaceTooLargeError:  # the policy's tree is larger than the table: score the table instead
        ids = mask = lq = None
    if ids is not None and torch.equal(ids, posterior.completion_ids) and torch.equal(mask, posterior.mask):
        return lq
    return policy.score(posterior.prompt, posterior.completion_ids, posterior.mask,
                        batch_size=batch_size).sum(-1).double().cpu()


def _mass_outside(q: torch.Tensor, posterior: ExactPosterior, dtype: torch.dtype) -> float:
    """q's mass outside the table: 0 when the table is the whole space (untruncated prior);
    otherwise 1 - sum q, counted only above the rounding error of q's precision."""
    top_k = getattr(posterior.lm, "top_k", None)
    if top_k is None or top_k >= posterior.vocabulary.size:
        return 0.0
    outside = 1.0 - float(q.sum())
    tolerance = 1e-9 if dtype == torch.float64 else 1e-4
    return outside if outside > tolerance else 0.0


def compare(policy: CausalLM | torch.Tensor, posterior: ExactPosterior, batch_size: int = 1024) -> Comparison:
    """Exact KL both ways, TV and the RL objective of ``policy`` against ``posterior``.

    ``policy`` is a ``CausalLM`` sharing the prior's tokenizer, or log q over the table [K].
    """
    lq = policy if isinstance(policy, torch.Tensor) else policy_log_probs(policy, posterior, batch_size)
    # the precision q was computed in: the policy's, or for a table of log q the lower of the
    # table's and the prior's (a float64 table scored from a float32 model keeps float32 rounding)
    dtype = policy.dtype if isinstance(policy, CausalLM) else lq.dtype
    if dtype == torch.float64 and getattr(posterior.lm, "dtype", torch.float64) != torch.float64:
        dtype = posterior.lm.dtype
    lq = lq.double()
    q = lq.exp()
    q_outside = _mass_outside(q, posterior, dtype)
    lp, p = posterior.log_probs, posterior.probs
    pos = q > 0
    kl_qp = float((q[pos] * (lq[pos] - lp[pos])).sum())
    if q_outside > 0:
        kl_qp = math.inf
    kl_pq = float((p * (lp - lq)).sum()) if bool((lq[p > 0] > -math.inf).all()) else math.inf
    tv = 0.5 * (float((q - p).abs().sum()) + q_outside)
    r = posterior.rewards
    finite_r = torch.isfinite(r)
    mean_r = float((q[finite_r] * r[finite_r]).sum()) if not bool((pos & ~finite_r).any()) else -math.inf
    kl_q0 = float((q[pos] * (lq[pos] - posterior.prior_log_probs[pos])).sum())
    if q_outside > 0:  # q puts mass where pi0 has none: no partial sums
        mean_r, kl_q0 = math.nan, math.inf
    # divergences are >= 0: a float64 sum of about -1e-16 is rounding, reported as 0
    kl_qp, kl_pq, kl_q0 = (0.0 if v < 0 else v for v in (kl_qp, kl_pq, kl_q0))  # NaN stays NaN
    objective = mean_r - posterior.beta * kl_q0 if q_outside == 0 else -math.inf
    return Comparison(kl_qp, kl_pq, tv, objective, posterior.optimal_objective, mean_r, kl_q0, q_outside)
