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

Per token, along completions or in expectation at each position (the chain rule sums them)::

    token_kl[i, t]  = KL(pi*(. | x_i,<t) || q(. | x_i,<t))     pi* from ExactPosterior.token_posterior,
                                                                 q from the policy's start / step
    position_kl[t]  = E_{x_<t ~ pi*}[KL(pi*(. | x_<t) || q(. | x_<t))],   sum_t = KL(pi* || q)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from bayes_rlhf.errors import ConfigError, TokenizerMismatchError
from bayes_rlhf.exact.posterior import ExactPosterior
from bayes_rlhf.logweights import EmptySamplesError
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
    on_p = p > 0  # a hard constraint leaves p = 0 (lp = -inf) rows: 0 * (-inf) there would be NaN
    kl_pq = float((p[on_p] * (lp[on_p] - lq[on_p])).sum()) if bool((lq[on_p] > -math.inf).all()) else math.inf
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


def _policy_next_token_log_probs(policy, prompt: str, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log q(. | x_<t) [n, T, V] along each completion (rows after the end are unused)."""
    n, T = ids.shape
    state, logp = policy.start(prompt, n)
    out = [logp.double().cpu()]
    for t in range(T - 1):
        if not bool(mask[:, t + 1].any()):
            break
        tok = torch.where(mask[:, t], ids[:, t], torch.full_like(ids[:, t], policy.pad_id))
        state, logp = policy.step(state, tok)
        out.append(logp.double().cpu())
    while len(out) < T:
        out.append(torch.zeros_like(out[0]))
    return torch.stack(out, 1)


def token_kl(policy, posterior: ExactPosterior, ids: torch.Tensor, mask: torch.Tensor,
             direction: str = "forward", progress: bool = False) -> torch.Tensor:
    """Exact per-token KL between pi* and a policy along completions, Tensor [n, T] (nats).

    Entry (i, t) is ``KL(pi*(. | x_i,<t) || q(. | x_i,<t))`` for ``direction="forward"``, or
    ``KL(q || pi*)`` at that prefix for ``"reverse"``; 0 where ``mask`` is False. Along exact
    posterior draws, ``E_pi*[sum_t forward[:, t]] = KL(pi* || q)``.

    Parameters
    ----------
    policy : CausalLM
        Shares the posterior's tokenizer.
    ids, mask : LongTensor [n, T], BoolTensor [n, T]
        Completions in the posterior's support (T equal to the posterior's max_new_tokens).
    direction : {"forward", "reverse"}
    progress : bool
        Show a progress bar over the rows.
    """
    if direction not in ("forward", "reverse"):
        raise ConfigError(f"direction must be 'forward' or 'reverse', got {direction!r}")
    if not policy.vocabulary.same_as(posterior.vocabulary):
        raise TokenizerMismatchError("the policy's tokenizer differs from the prior's; per-token KL "
                                     "needs the same vocabulary and EOS")
    if ids.numel() == 0:
        raise EmptySamplesError("no completions given: pass at least one row of ids")
    T = posterior.completion_ids.shape[1]
    if ids.shape != mask.shape or ids.shape[1] != T:
        raise ConfigError(f"ids and mask must both be [n, {T}] (the posterior's max_new_tokens), "
                          f"got {tuple(ids.shape)} and {tuple(mask.shape)}")
    log_q = _policy_next_token_log_probs(policy, posterior.prompt, ids, mask)
    out = torch.zeros(ids.shape, dtype=torch.float64)
    cache: dict[tuple[int, ...], torch.Tensor] = {}
    rows = ids.tolist()
    for i in tqdm(range(ids.shape[0]), desc="token KL", disable=not progress):
        for t in range(int(mask[i].sum())):
            prefix = tuple(rows[i][:t])
            if prefix not in cache:
                cache[prefix] = posterior.token_posterior(prefix, log=True)
            out[i, t] = _kl(cache[prefix], log_q[i, t], direction)
    return out


def _kl(log_p: torch.Tensor, log_q: torch.Tensor, direction: str) -> float:
    a, b = (log_p, log_q) if direction == "forward" else (log_q, log_p)
    pa = a.exp()
    pos = pa > 0
    if bool((b[pos] == -math.inf).any()):
        return math.inf
    return float((pa[pos] * (a[pos] - b[pos])).sum())


def position_kl(log_q: torch.Tensor, posterior: ExactPosterior, direction: str = "forward") -> torch.Tensor:
    """Exact expected per-token KL at each position, from log q over the table, Tensor [T] (nats).

    ``out[t] = E_{x_<t ~ p}[KL(p(. | x_<t) || r(. | x_<t))]`` with (p, r) = (pi*, q) for
    ``"forward"`` and (q, pi*) for ``"reverse"``; ``out.sum()`` is KL(pi* || q) or KL(q || pi*)
    (the chain rule). Conditionals come from the tables, so no model call is needed.
    """
    if direction not in ("forward", "reverse"):
        raise ConfigError(f"direction must be 'forward' or 'reverse', got {direction!r}")
    lq = torch.as_tensor(log_q).double().reshape(-1)
    if lq.numel() != posterior.num_completions:
        raise ConfigError(f"log_q has {lq.numel()} entries for a table of {posterior.num_completions}")
    mass = float(torch.logsumexp(lq, 0).exp())
    if abs(mass - 1.0) > 1e-4:  # q's conditionals would be renormalised over the table: not q's own
        raise ConfigError(f"q has mass {mass:.6f} on the table, not 1: its per-position KLs are not those of q "
                          "(q puts mass outside the truncated support); restrict the policy to the target's "
                          "support (policy.with_support(prior)) or use token_kl, which reads q's own conditionals")
    lp = posterior.log_probs
    if direction == "reverse":
        lp, lq = lq, lp
    ids = torch.where(posterior.mask, posterior.completion_ids, -1)
    out = torch.zeros(ids.shape[1], dtype=torch.float64)
    for t in range(ids.shape[1]):
        alive = posterior.mask[:, t]
        if not bool(alive.any()):
            break
        # the table is sorted, so rows sharing a prefix are contiguous: group ids by run starts
        child, parent = _runs(ids[alive, : t + 1]), _runs(ids[alive, :t])
        p_child = torch.zeros(int(child[-1]) + 1, dtype=torch.float64).index_add_(0, child, lp[alive].exp())
        q_child = torch.zeros_like(p_child).index_add_(0, child, lq[alive].exp())
        par_of_child = torch.zeros(p_child.numel(), dtype=torch.long).index_copy_(0, child, parent)
        p_par = torch.zeros(int(parent[-1]) + 1, dtype=torch.float64).index_add_(0, par_of_child, p_child)
        q_par = torch.zeros_like(p_par).index_add_(0, par_of_child, q_child)
        pos = p_child > 0
        if bool((q_child[pos] == 0).any()):
            out[t] = math.inf
            continue
        cond_p = p_child[pos] / p_par[par_of_child[pos]]
        cond_q = q_child[pos] / q_par[par_of_child[pos]]
        out[t] = float((p_child[pos] * (cond_p.log() - cond_q.log())).sum())
    return out


def _runs(rows: torch.Tensor) -> torch.Tensor:
    """Group index [m] of each row of a sorted [m, c] tensor: consecutive equal rows share one."""
    if rows.shape[1] == 0:
        return torch.zeros(rows.shape[0], dtype=torch.long)
    starts = torch.ones(rows.shape[0], dtype=torch.long)
    starts[1:] = (rows[1:] != rows[:-1]).any(1).long()
    return starts.cumsum(0) - 1
