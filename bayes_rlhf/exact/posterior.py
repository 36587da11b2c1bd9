"""ExactPosterior: the enumerated posterior of one prompt, and everything computable from it.

With K completions x_k (sorted lexicographically), prior log-probs l_k and rewards r_k::

    log Z          = logsumexp_k (l_k + r_k / beta)
    log pi*(x_k)   = l_k + r_k / beta - log Z
    V(prefix)      = beta * [logsumexp_{k ⊒ prefix}(l_k + r_k/beta) - logsumexp_{k ⊒ prefix} l_k]
    pi*(v | prefix) = sum_{k ⊒ prefix+v} pi*(x_k) / sum_{k ⊒ prefix} pi*(x_k)

Completions that extend a prefix form one contiguous block of the sorted table, found by a
binary search per position, so prefix queries cost O(T log K).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from bayes_rlhf._checks import check_generator, check_int, is_integer
from bayes_rlhf._deprecation import positional_generator
from bayes_rlhf.errors import ConfigError, NoMassError, PromptError
from bayes_rlhf.models.completions import Completions
from bayes_rlhf.models.vocabulary import Vocabulary


# rows per slice of the normalisation's passes: each slice's temporaries stay in the CPU's cache
_SLICE = 1 << 16


def _logsumexp(x: torch.Tensor) -> float:
    """logsumexp of a 1-d tensor, slice by slice (no temporary the size of ``x``); -inf if empty."""
    if x.numel() <= _SLICE:
        return float(torch.logsumexp(x, 0))
    return float(torch.logsumexp(torch.stack([torch.logsumexp(x[a: a + _SLICE], 0)
                                              for a in range(0, x.numel(), _SLICE)]), 0))


def _normalise(l0: torch.Tensor, rewards: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(prior log-probs renormalised, log-weights l0 + r / beta, their logsumexp) in two passes over
    slices; the prior is shifted by its logsumexp when that is within 1e-4 of 0 (float rounding)."""
    total = _logsumexp(l0)
    shift = abs(total) < 1e-4
    prior = torch.empty_like(l0) if shift else l0
    log_w = torch.empty_like(l0)
    parts = []
    for a in range(0, l0.numel(), _SLICE):
        b = a + _SLICE
        if shift:
            torch.sub(l0[a:b], total, out=prior[a:b])
        torch.add(prior[a:b], rewards[a:b] / beta, out=log_w[a:b])
        parts.append(torch.logsumexp(log_w[a:b], 0))
    log_z = float(torch.logsumexp(torch.stack(parts), 0)) if parts else -math.inf
    return prior, log_w, log_z


@dataclass(repr=False)
class ExactPosterior:
    """The exact posterior over every completion of ``prompt`` (float64 throughout).

    Attributes
    ----------
    prompt : str
    completion_ids : LongTensor [K, T]
    mask : BoolTensor [K, T]
    prior_log_probs, rewards, log_probs : Tensor [K]
        log pi0(x), r(x) and log pi*(x) of each completion.
    log_z : float
        Natural log of Z = E_pi0[exp(r / beta)].
    beta : float
    lm : CausalLM or None
        The prior the table was enumerated from; None for a table read back without its model
        (``load_run``), which then needs ``vocabulary``.
    vocabulary : Vocabulary
        Decodes and encodes the table's completions (default: ``lm.vocabulary``).
    """

    prompt: str
    completion_ids: torch.Tensor
    mask: torch.Tensor
    prior_log_probs: torch.Tensor
    rewards: torch.Tensor
    beta: float
    lm: object = field(default=None, repr=False)
    vocabulary: Vocabulary | None = field(default=None, repr=False)
    log_probs: torch.Tensor = field(init=False)
    log_z: float = field(init=False)

    def __repr__(self) -> str:
        return (f"ExactPosterior(prompt={self.prompt!r}, num_completions={self.num_completions}, "
                f"beta={self.beta:g}, log_z={self.log_z:.6g}, max_new_tokens={self.completion_ids.shape[1]})")

    def __post_init__(self):
        if self.vocabulary is None:
            if self.lm is None:
                raise ConfigError("an ExactPosterior needs the prior lm or its vocabulary to read completions")
            self.vocabulary = self.lm.vocabulary
        # the table is the prior's whole (truncated) space: renormalise in float64 so that float32
        # rounding (masses summing to 1 + 4e-9) does not show up as a negative KL or a shifted log Z
        self.prior_log_probs, log_w, self.log_z = _normalise(self.prior_log_probs.double(), self.rewards, self.beta)
        if not math.isfinite(self.log_z):
            raise ConfigError("every completion has reward -inf: the posterior has no mass")
        self.log_probs = log_w.sub_(self.log_z)
        self._cols = self.completion_ids.t().contiguous()
        self._cdf = None
        self._texts = None

    # ------------------------------------------------------------------ table access
    @property
    def num_completions(self) -> int:
        return self.completion_ids.shape[0]

    @property
    def probs(self) -> torch.Tensor:
        """Posterior probabilities [K]."""
        return self.log_probs.exp()

    @property
    def completions(self) -> list[str]:
        """Completion texts [K] (decoded once, on first use)."""
        if self._texts is None:
            self._texts = self.vocabulary.decode(self.completion_ids, self.mask)
        return self._texts

    def _as_ids(self, completion: str | Sequence[int] | torch.Tensor) -> list[int]:
        if isinstance(completion, str):
            ids, mask = self.vocabulary.encode([completion], self.completion_ids.shape[1])
            return ids[0, mask[0]].tolist()
        return self._token_ids(completion)

    def _token_ids(self, ids: Sequence[int] | torch.Tensor) -> list[int]:
        """``ids`` as a list of ints, each checked to be a token id of the vocabulary (PromptError)."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() > 1 or ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
                raise PromptError(f"token ids must be a 1-d integer tensor, got shape {tuple(ids.shape)} {ids.dtype}")
            ids = ids.tolist()
        if isinstance(ids, str) or not hasattr(ids, "__iter__"):
            raise PromptError(f"token ids must be a sequence of ints, got {type(ids).__name__}")
        ids = [t.item() if isinstance(t, torch.Tensor) and t.numel() == 1 else t for t in ids]  # floats refused below
        V = self.vocabulary.size
        bad = [t for t in ids if not is_integer(t) or not 0 <= t < V]
        if bad:
            raise PromptError(f"token ids must be integers in [0, {V}) (the vocabulary), got {bad[0]!r} in {ids}")
        return [int(t) for t in ids]

    def prefix_range(self, prefix: Sequence[int]) -> tuple[int, int]:
        """[lo, hi): rows of the table whose completion starts with ``prefix`` (token ids)."""
        lo, hi = 0, self.num_completions
        for c, tok in enumerate(prefix):
            if c >= self._cols.shape[0]:
                return lo, lo
            col = self._cols[c, lo:hi]
            t = torch.tensor([int(tok)])
            a = int(torch.searchsorted(col, t, right=False))
            b = int(torch.searchsorted(col, t, right=True))
            lo, hi = lo + a, lo + b
            if lo == hi:
                break
        return lo, hi

    def index_of(self, completion: str | Sequence[int] | torch.Tensor) -> int | None:
        """Row of a complete completion (ids or text), or None if it is not in the support."""
        ids = self._as_ids(completion)
        lo, hi = self.prefix_range(ids)
        for k in range(lo, hi):
            if int(self.mask[k].sum()) == len(ids):
                return k
        return None

    def log_prob(self, completion: str | Sequence[int] | torch.Tensor) -> float:
        """log pi*(completion); -inf outside the support."""
        k = self.index_of(completion)
        return float(self.log_probs[k]) if k is not None else -math.inf

    def probability(self, completion: str | Sequence[int] | torch.Tensor) -> float:
        """pi*(completion) of a completion given as text or token ids."""
        return math.exp(self.log_prob(completion))

    # ------------------------------------------------------------------ token level
    def _check_prefix(self, prefix: Sequence[int]) -> tuple[int, int]:
        prefix = self._token_ids(prefix)
        eos = self.vocabulary.eos_token_id
        if eos is not None and eos in prefix:
            raise PromptError("the prefix contains EOS: the completion has already ended")
        if len(prefix) >= self.completion_ids.shape[1]:
            raise PromptError(f"a prefix must be shorter than max_new_tokens={self.completion_ids.shape[1]}")
        lo, hi = self.prefix_range(prefix)
        if lo == hi:
            raise PromptError(f"the prefix {prefix} has zero prior probability")
        return lo, hi

    def token_posterior(self, prefix_ids: Sequence[int] = (), log: bool = False) -> torch.Tensor:
        """Exact next-token posterior pi*(. | prefix) over the vocabulary, Tensor [V]."""
        lo, hi = self._check_prefix(prefix_ids)
        return self._next_token(self.log_probs[lo:hi], self._cols[len(prefix_ids), lo:hi], log)

    def token_prior(self, prefix_ids: Sequence[int] = (), log: bool = False) -> torch.Tensor:
        """The (truncated) prior's next-token distribution after a prefix, Tensor [V]."""
        lo, hi = self._check_prefix(prefix_ids)
        return self._next_token(self.prior_log_probs[lo:hi], self._cols[len(prefix_ids), lo:hi], log)

    def _next_token(self, lp: torch.Tensor, tok: torch.Tensor, log: bool) -> torch.Tensor:
        m = lp.max()
        if m == -math.inf:  # the prefix has prior mass but none under this table (a hard constraint)
            raise NoMassError("the prefix has probability 0 under this distribution (every completion through "
                              "it has reward -inf): its next-token distribution is undefined")
        mass = torch.zeros(self.vocabulary.size, dtype=torch.float64).index_add_(0, tok, (lp - m).exp())
        mass = mass / mass.sum()
        return mass.log() if log else mass

    def soft_value(self, prefix_ids: Sequence[int] = ()) -> float:
        """V(prefix) = beta log E_pi0[exp(r / beta) | prefix]; V(()) = beta log Z.

        For a complete completion this is its reward.
        """
        prefix = self._token_ids(prefix_ids)
        lo, hi = self.prefix_range(prefix)
        if lo == hi:
            raise PromptError(f"the prefix {prefix} has zero prior probability")
        l0 = self.prior_log_probs[lo:hi]
        lw = l0 + self.rewards[lo:hi] / self.beta
        return self.beta * float(torch.logsumexp(lw, 0) - torch.logsumexp(l0, 0))

    def soft_values(self, completion: str | Sequence[int]) -> torch.Tensor:
        """[V_0, V_1, ..., V_L] along a completion of L tokens (V_L is its reward)."""
        ids = self._as_ids(completion)
        return torch.tensor([self.soft_value(ids[:t]) for t in range(len(ids) + 1)], dtype=torch.float64)

    # ------------------------------------------------------------------ expectations
    def expectation(self, values: torch.Tensor) -> float:
        """E_pi*[f] for values [K] of f on the table."""
        return float((self.probs * values.double()).sum())

    @property
    def mean_reward(self) -> float:
        """E_pi*[r]."""
        return self.expectation(self.rewards.clamp(min=-1e300))

    @property
    def prior_mean_reward(self) -> float:
        """E_pi0[r] (-inf if the prior can violate a hard constraint)."""
        p0 = self.prior_log_probs.exp()
        if bool(((p0 > 0) & torch.isinf(self.rewards)).any()):
            return -math.inf
        return float((p0 * self.rewards).sum())

    @property
    def kl_to_prior(self) -> float:
        """KL(pi* || pi0) = E_pi*[r] / beta - log Z (nats), summed in float64 (>= 0)."""
        p = self.probs
        keep = p > 0
        return max(0.0, float((p[keep] * (self.log_probs[keep] - self.prior_log_probs[keep])).sum()))

    @property
    def entropy(self) -> float:
        """H(pi*) in nats."""
        p = self.probs
        return float(-(p * torch.where(p > 0, self.log_probs, 0.0)).sum())

    @property
    def prior_entropy(self) -> float:
        p0 = self.prior_log_probs.exp()
        return float(-(p0 * self.prior_log_probs).sum())

    @property
    def optimal_objective(self) -> float:
        """max_q E_q[r] - beta KL(q || pi0) = beta log Z, attained at q = pi*."""
        return self.beta * self.log_z

    # ------------------------------------------------------------------ sampling and summaries
    @positional_generator(2)  # post.sample(n, generator), DESIGN.md's older documented call
    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Completions:
        """n exact posterior samples (inverse CDF on the table; log_probs are posterior).

        Returns ``Completions`` with ``source="exact"`` (usable by ``upper_bound``).
        """
        n = check_int(n, "n", 1)
        check_generator(generator)
        if self._cdf is None:
            self._cdf = self.probs.cumsum(0)
        u = torch.rand(n, generator=generator, dtype=torch.float64) * self._cdf[-1]
        idx = torch.searchsorted(self._cdf, u).clamp(max=self.num_completions - 1)
        return Completions(self.completion_ids[idx], self.mask[idx], self.log_probs[idx],
                           torch.zeros(n, dtype=torch.long), source="exact")

    def top(self, k: int = 10, by: str = "posterior") -> list[dict]:
        """The k most probable completions under ``by`` ("posterior" or "prior"); k an integer >= 1.

        Returns at most ``num_completions`` rows, most probable first: completion (its text),
        prior, posterior, reward and index (its row in the table).
        """
        k = check_int(k, "top(k): k", 1)
        if by not in ("posterior", "prior"):
            raise ConfigError(f"by must be 'posterior' or 'prior', got {by!r}")
        key = self.log_probs if by == "posterior" else self.prior_log_probs
        idx = torch.topk(key, min(k, self.num_completions)).indices
        texts = self.vocabulary.decode(self.completion_ids[idx], self.mask[idx])
        return [{"completion": t, "prior": float(self.prior_log_probs[i].exp()),
                 "posterior": float(self.log_probs[i].exp()), "reward": float(self.rewards[i]), "index": i}
                for t, i in zip(texts, idx.tolist())]

    def summary(self) -> dict:
        """Plain floats: log Z, E[r] under prior and posterior, KL(pi* || pi0), entropies."""
        return {"prompt": self.prompt, "beta": self.beta, "num_completions": self.num_completions,
                "log_z": self.log_z, "optimal_objective": self.optimal_objective,
                "prior_mean_reward": self.prior_mean_reward, "posterior_mean_reward": self.mean_reward,
                "kl_posterior_prior": self.kl_to_prior, "posterior_entropy": self.entropy,
                "prior_entropy": self.prior_entropy}
