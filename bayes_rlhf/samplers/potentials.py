"""SMC's potentials: log psi of a particle's state after each token.

A particle that ended (EOS, or the T-th token) carries its terminal potential, a particle that
goes on carries the twist (1 without one)::

    log psi(x_{1:t}) = r(c, x) / beta           if x ended at t
                       log twist_t(x_{1:t})      otherwise (0 without a twist)

``Potentials.of_candidates`` evaluates it for every token the prior can produce next (what the
twisted proposal q ∝ pi0 psi needs), in one reward call and one twist call.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from bayes_rlhf.target import Target


class Potentials:
    """log psi of SMC states for ``target`` with ``twist`` (None: the terminal reward only)."""

    def __init__(self, target: Target, twist=None):
        self.target, self.twist = target, twist

    def __call__(self, prompts: Sequence[str], ids: torch.Tensor, mask: torch.Tensor, ended: torch.Tensor,
                 going: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """log psi [n] (r / beta where ``ended``, the twist where ``going``, 0 elsewhere) and rewards [n].

        ``prompts`` has one prompt per row of ``ids`` [n, >= t + 1]; rewards are NaN where not ended.
        """
        n = ids.shape[0]
        log_psi = torch.zeros(n, dtype=torch.float64)
        rewards = torch.full((n,), math.nan, dtype=torch.float64)
        rows = torch.nonzero(ended).squeeze(-1)
        if rows.numel():
            r = self.target.rewards([prompts[i] for i in rows.tolist()], ids[rows], mask[rows])
            rewards[rows] = r
            log_psi[rows] = r / self.target.beta
        rows = torch.nonzero(going).squeeze(-1)
        if rows.numel() and self.twist is not None:
            log_psi[rows] = self.twist.log_potential([prompts[i] for i in rows.tolist()],
                                                     ids[rows, : t + 1], self.target)
        return log_psi, rewards

    def of_candidates(self, prompts: Sequence[str], prefixes: torch.Tensor, prior_logp: torch.Tensor,
                      candidates: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """log psi and rewards [a, V] of the candidate next tokens (-inf / NaN elsewhere).

        ``prefixes`` [a, t] are a unfinished particles (``prompts`` [a] theirs), ``prior_logp`` [a, V]
        their prior next-token log-probs. ``candidates`` BoolTensor [a, V]: the tokens to evaluate
        (default: every v with pi0(v | prefix) > 0); one reward call and one twist call over those
        rows only. A candidate ends when it is EOS or the T-th token.
        """
        a, V = prior_logp.shape
        if candidates is None:
            candidates = torch.isfinite(prior_logp)
        rows, toks = torch.nonzero(candidates.cpu(), as_tuple=True)
        psi, r = self.at(prompts, prefixes, rows, toks)
        cand_psi = torch.full((a, V), -math.inf, dtype=torch.float64)
        cand_r = torch.full((a, V), math.nan, dtype=torch.float64)
        cand_psi[rows, toks], cand_r[rows, toks] = psi, r
        return cand_psi, cand_r

    def at(self, prompts: Sequence[str], prefixes: torch.Tensor, rows: torch.Tensor,
           toks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log psi and rewards [h] of h candidates: prefix ``rows[j]`` of ``prefixes`` [a, t] followed by
        token ``toks[j]`` (CPU LongTensors [h]); rewards NaN where the candidate does not end."""
        t = prefixes.shape[1]
        ids = torch.cat([prefixes[rows], toks[:, None]], 1)
        mask = torch.ones(ids.shape, dtype=torch.bool)
        eos = self.target.prior.eos_token_id
        ended = (toks == eos) if eos is not None else torch.zeros_like(toks, dtype=torch.bool)
        ended = ended | (t + 1 == self.target.max_new_tokens)
        return self([prompts[i] for i in rows.tolist()], ids, mask, ended, ~ended, t)
