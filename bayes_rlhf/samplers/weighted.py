"""WeightedSamples: the output of every sampler.

A weighted particle approximation of pi*(x | c) for one or more prompts::

    pi*(x | c_p) ~= sum_{i : prompt(i) = p} w_i delta_{x_i}(x),   w_i = exp(lw_i) / sum_j exp(lw_j)

together with ``log_z[p]``, an estimate of log Z(c_p) whose exponential is unbiased for Z
where the algorithm allows it, and the Kish effective sample size per prompt,
``ess = 1 / sum_i w_i^2``. Log-weights are unnormalised and float64; normalisation happens
per prompt at the point of use (``bayes_rlhf.logweights``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bayes_rlhf._checks import check_generator, check_int
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.logweights import group_softmax, kish_ess
from bayes_rlhf.models.completions import Completions
from bayes_rlhf.models.vocabulary import Vocabulary, as_vocabulary


@dataclass(frozen=True)
class SMCHistory:
    """Per-step record of an SMC run (S steps, P prompts).

    Attributes
    ----------
    ess : Tensor [S, P]
        Kish ESS of the weights after reweighting at each step (before any resampling).
    resampled : BoolTensor [S, P]
        Whether the particles of each prompt were resampled after the step.
    log_z : Tensor [S, P]
        Running estimate of log Z after each step.
    num_alive : LongTensor [S, P]
        Particles still generating after each step.
    """

    ess: torch.Tensor
    resampled: torch.Tensor
    log_z: torch.Tensor
    num_alive: torch.Tensor

    @property
    def num_resampling_steps(self) -> torch.Tensor:
        """LongTensor [P]: how many times each prompt's particles were resampled."""
        return self.resampled.sum(0)


@dataclass(frozen=True)
class WeightedSamples:
    """Weighted completions of one or more prompts (the output of every sampler).

    Attributes
    ----------
    ids : LongTensor [n, T]
        Completion tokens, padded with the model's pad id after the end.
    mask : BoolTensor [n, T]
        True at real tokens (a completion ends at its first EOS, kept, or at T).
    log_weights : Tensor [n]
        Unnormalised float64 log-weights; normalise within each prompt.
    rewards : Tensor [n]
        r(c, x) of each completion (float64).
    log_z : Tensor [P]
        Estimate of log Z(c_p) per prompt (natural log, float64).
    prompt_index : LongTensor [n]
        Which prompt in ``prompts`` each row continues.
    prompts : tuple of str
        The P prompts.
    vocabulary : Vocabulary
        Decodes ``ids`` (used by ``texts``). A CausalLM may be given instead: it is replaced by its
        ``vocabulary`` when the samples are built (they never hold the model; ``as_vocabulary``).
        The library's samplers pass ``target.prior.vocabulary``; anything else is a ConfigError.
    history : SMCHistory, optional
        Per-step record (SMC only).
    info : dict
        Sampler-specific scalars (acceptance rate, proposals drawn, time, ...).
    """

    ids: torch.Tensor
    mask: torch.Tensor
    log_weights: torch.Tensor
    rewards: torch.Tensor
    log_z: torch.Tensor
    prompt_index: torch.Tensor
    prompts: tuple
    vocabulary: Vocabulary = field(repr=False, compare=False)
    history: SMCHistory | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        # a CausalLM is accepted and replaced by its Vocabulary (documented): a result keeps no model
        object.__setattr__(self, "vocabulary", as_vocabulary(self.vocabulary, "WeightedSamples.vocabulary"))
        n = self.ids.shape[0]
        for name in ("mask", "log_weights", "rewards", "prompt_index"):
            if getattr(self, name).shape[0] != n:
                raise ConfigError(f"WeightedSamples.{name} has {getattr(self, name).shape[0]} rows, ids has {n}")
        if self.log_z.shape != (len(self.prompts),):
            raise ConfigError(f"WeightedSamples.log_z must have shape ({len(self.prompts)},), "
                              f"got {tuple(self.log_z.shape)}")

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __repr__(self) -> str:
        """A one-line summary (printing every tensor would flood a notebook); the fields hold the rest."""
        n, T = self.ids.shape
        return (f"WeightedSamples({n} rows of {self.num_prompts} prompt(s), T={T}, "
                f"log_z={_first(self.log_z.tolist())}, ess={_first(self.ess.tolist(), '.1f')})")

    @property
    def num_prompts(self) -> int:
        return len(self.prompts)

    @property
    def texts(self) -> list[str]:
        """Decoded completion texts [n] (EOS and padding removed)."""
        return self.vocabulary.decode(self.ids, self.mask)

    def rows(self, p: int = 0) -> torch.Tensor:
        """LongTensor [n_p]: row indices of prompt ``p``."""
        return torch.nonzero(self.prompt_index == p).squeeze(-1)

    def normalized_weights(self) -> torch.Tensor:
        """Tensor [n]: self-normalised weights, summing to 1 within each prompt."""
        return group_softmax(self.log_weights, self.prompt_index, self.num_prompts)

    @property
    def ess(self) -> torch.Tensor:
        """Tensor [P]: Kish effective sample size 1 / sum w^2 per prompt."""
        return torch.tensor([kish_ess(self.log_weights[self.rows(p)]) for p in range(self.num_prompts)],
                            dtype=torch.float64)

    def expectation(self, values: torch.Tensor | None = None) -> torch.Tensor:
        """Tensor [P]: self-normalised estimate of E_pi*[f] per prompt; f = reward by default.

        ``values`` is Tensor [n], f evaluated on each row. Rows with zero weight are ignored
        (so a reward of -inf there does not poison the sum).
        """
        values = self.rewards if values is None else values.double().cpu()
        w = self.normalized_weights()
        pos = w > 0
        contrib = torch.where(pos, w * torch.where(pos, values, 0.0), 0.0)
        return torch.zeros(self.num_prompts, dtype=torch.float64).index_add_(0, self.prompt_index, contrib)

    @property
    def mean_reward(self) -> torch.Tensor:
        """Tensor [P]: self-normalised E_pi*[r] per prompt."""
        return self.expectation()

    def completions(self) -> Completions:
        """The rows as ``Completions`` (log_probs hold the normalised log-weights)."""
        lw = torch.log(self.normalized_weights())
        return Completions(self.ids, self.mask, lw, self.prompt_index)

    def resample(self, num_samples: int, *, generator: torch.Generator | None = None,
                 scheme: str = "multinomial") -> Completions:
        """Sampling-importance-resampling: ``num_samples`` equally weighted draws per prompt.

        Returns ``Completions`` grouped by prompt (log_probs are zeros: the draws are unweighted),
        with ``source="resampled"``: approximate posterior draws, not exact ones.
        """
        from bayes_rlhf.samplers.resampling import get_resampler

        num_samples = check_int(num_samples, "num_samples", 1)
        check_generator(generator)
        resampler = get_resampler(scheme)
        picked = []
        for p in range(self.num_prompts):
            r = self.rows(p)
            picked.append(r[resampler(self.log_weights[r], num_samples, generator=generator)])
        idx = torch.cat(picked)
        return Completions(self.ids[idx], self.mask[idx], torch.zeros(idx.numel(), dtype=torch.float64),
                           self.prompt_index[idx], source="resampled")

    def summary(self) -> list[dict]:
        """Plain floats per prompt: log Z estimate, ESS, self-normalised E[r], sample count, ``info``.

        With an SMC ``history``, also ``num_resampling_steps`` of that prompt (0: the run was plain
        importance sampling for it; see ``smc``).
        """
        ess, er = self.ess, self.mean_reward
        rows = []
        for p in range(self.num_prompts):
            row = {"prompt": self.prompts[p], "log_z": float(self.log_z[p]), "ess": float(ess[p]),
                   "mean_reward": float(er[p]), "num_samples": int(self.rows(p).numel())}
            if self.history is not None:
                row["num_resampling_steps"] = int(self.history.num_resampling_steps[p])
            rows.append({**row, **self.info})
        return rows


def _first(values: list[float], fmt: str = ".4f", k: int = 3) -> str:
    """``values`` as ``[a, b, c, ...(P)]``: at most k numbers, then how many there are."""
    shown = ", ".join(format(v, fmt) for v in values[:k])
    return f"[{shown}, ... ({len(values)})]" if len(values) > k else f"[{shown}]"
