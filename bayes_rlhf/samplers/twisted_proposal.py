"""The twisted proposal q ∝ pi0 psi_t, the locally optimal one for a twist, exact or on a top-p / top-k head."""

from __future__ import annotations

import math

import torch

from bayes_rlhf._checks import check_int, is_real
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.samplers.proposal_protocol import Proposed, Stateless, StepView


class TwistedProposal(Stateless):
    """q(v | x_<t) ∝ pi0(v | x_<t) psi_t(x_<t, v): the locally optimal proposal for the twist.

    psi_t(x_<t, v) is the twist, or exp(r / beta) where v ends. Exact by default (``top_p=None``,
    ``top_k=None``): the potential of every token in the prior's support is evaluated, and the
    incremental weight is sum_v pi0(v | x_<t) psi_t(x_<t, v) / psi_{t-1}(x_<t) whatever is drawn.

    Cheap and still unbiased with ``top_p`` and/or ``top_k``: the potential is evaluated only on the
    head H of each row (the most likely tokens under pi0, within the tokens ``view.allowed`` lets
    through, holding at least ``top_p`` of their mass, at most ``top_k`` of them); every other supported
    token gets the parent's potential psi_{t-1}(x_<t) as a stand-in, so::

        q(v) ∝ pi0(v) psi_t(x_<t, v)   for v in H,      q(v) ∝ pi0(v) psi_{t-1}(x_<t)   otherwise

    q > 0 wherever pi0 > 0, and SMC weights the drawn token by the exact pi0 / q and the potential it
    evaluates for the drawn token (one row per particle), so E[Z_hat] = Z still. Only the variance
    depends on the head: the more of the mass where psi varies it holds, the closer to the exact one.

    Parameters
    ----------
    top_p : float in (0, 1], optional
        Evaluate the potential on the smallest set of most likely tokens with this prior mass.
    top_k : int >= 1, optional
        At most this many tokens per row (with ``top_p``: whichever is smaller).
    """

    lookahead = True
    masks_allowed = True  # honours view.allowed: q is 0 on forbidden tokens and normalised over the rest

    def __init__(self, top_p: float | None = None, top_k: int | None = None):
        if top_p is not None and (not is_real(top_p) or not 0 < top_p <= 1):
            raise ConfigError(f"top_p must be in (0, 1] or None, got {top_p!r}; e.g. 0.95")
        if top_k is not None:
            top_k = check_int(top_k, "top_k", 1)
        self.top_p = None if top_p is None else float(top_p)
        self.top_k = top_k

    def log_probs(self, state, view: StepView) -> Proposed:
        if self.top_p is None and self.top_k is None:
            return self._exact(view)
        return self._on_head(view)

    def _exact(self, view: StepView) -> Proposed:
        """Every supported (and allowed) token's potential evaluated."""
        logp0 = view.prior_logp.cpu()
        support = torch.isfinite(logp0)
        if view.allowed is not None:
            support = support & view.allowed.cpu()
        prompts = [view.prompts[i] for i in view.live.tolist()]
        cand_psi, cand_r = view.potentials.of_candidates(prompts, view.ids[view.live, : view.t], logp0, support)
        joint = logp0 + cand_psi
        norm = torch.logsumexp(joint, -1, keepdim=True)
        logq = torch.where(torch.isfinite(norm), joint - norm, logp0)  # no mass: weight -inf anyway
        return Proposed(logq.to(view.prior_logp.device), cand_psi, cand_r, dead=~torch.isfinite(norm.squeeze(-1)))

    def _on_head(self, view: StepView) -> Proposed:
        """The potentials on each row's head only; the parent's potential stands in elsewhere."""
        logp0 = view.prior_logp.cpu()
        a, V = logp0.shape
        lp = logp0 if view.allowed is None else logp0.masked_fill(~view.allowed.cpu(), -math.inf)
        log_mass = torch.logsumexp(lp, -1)                                 # log pi0(allowed) [a]
        rows, toks = self._head(lp, log_mass)                              # h head candidates
        prompts = [view.prompts[i] for i in view.live.tolist()]
        psi, r = view.potentials.at(prompts, view.ids[view.live, : view.t], rows, toks)
        parent = view.log_psi.double() if view.log_psi is not None else torch.zeros(a, dtype=torch.float64)
        parent = torch.where(torch.isfinite(parent), parent, 0.0)
        head_lp = lp[rows, toks]
        # log Z_q = log(sum_head pi0 psi + pi0(rest) psi_parent), the rest's mass without the head's
        head_mass = torch.zeros(a, dtype=torch.float64).index_add_(0, rows, head_lp.exp())
        rest = torch.log((log_mass.exp() - head_mass).clamp(min=0.0)) + parent
        joint_h = head_lp + psi
        top = torch.maximum(rest, torch.full((a,), -math.inf, dtype=torch.float64).scatter_reduce(
            0, rows, joint_h, "amax"))
        top = torch.where(torch.isfinite(top), top, 0.0)
        head_sum = torch.zeros(a, dtype=torch.float64).index_add_(0, rows, (joint_h - top[rows]).exp())
        total = torch.exp(rest - top) + head_sum
        log_zq = torch.log(total) + top
        dead = ~torch.isfinite(log_zq)
        logq = lp + (parent - log_zq)[:, None]                              # the rest: pi0 psi_parent / Z_q
        logq[rows, toks] = joint_h - log_zq[rows]                           # the head: pi0 psi / Z_q
        if bool(dead.any()):
            logq[dead] = logp0[dead]                                        # weight -inf anyway
        cand_psi = torch.full((a, V), math.nan, dtype=torch.float64)       # NaN: SMC evaluates a drawn one
        cand_r = torch.full((a, V), math.nan, dtype=torch.float64)
        cand_psi[rows, toks], cand_r[rows, toks] = psi, r
        return Proposed(logq.to(view.prior_logp.device), cand_psi, cand_r, dead=dead)

    def _head(self, lp: torch.Tensor, log_mass: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, tokens) [h]: each row's most likely tokens under ``lp`` [a, V] holding ``top_p`` of
        its mass exp(log_mass) (at most ``top_k``). A partial top-k, grown until every row is covered."""
        V = lp.shape[1]
        cap = V if self.top_k is None else min(self.top_k, V)
        k = cap if self.top_p is None else min(cap, 64)
        while True:
            top, idx = torch.topk(lp, k, dim=-1)                            # most likely first
            keep = torch.isfinite(top)
            if self.top_p is None:
                break
            share = torch.exp(top - log_mass[:, None])                      # NaN on a row with no mass
            before = share.cumsum(-1) - share                               # the share ranked above
            keep = keep & (before < self.top_p)
            covered = ~(before[:, -1] + share[:, -1] < self.top_p) | ~keep[:, -1]
            if k == cap or bool(covered.all()):
                break
            k = min(cap, 4 * k)
        r, c = torch.nonzero(keep, as_tuple=True)
        return r, idx[r, c]
