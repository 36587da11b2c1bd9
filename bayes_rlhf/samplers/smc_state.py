"""SMC's settings (``SMCConfig``) and its state between steps (``SMCState``); the algorithm is ``smc.py``."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass

import torch

from bayes_rlhf._checks import is_real, plain
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.samplers._common import check_count
from bayes_rlhf.samplers._live_rows import LiveRows
from bayes_rlhf.samplers.resampling import get_resampler


@dataclass(frozen=True)
class SMCConfig:
    """Settings of one SMC run.

    Parameters
    ----------
    num_particles : int
        N >= 1 particles per prompt.
    ess_threshold : float
        Resample a prompt's particles when ESS < ess_threshold * N; in (0, 1] (1: whenever the
        weights are not all equal).
    resampling : str or callable
        "systematic", "stratified", "multinomial", "residual", or (log_weights, num_samples, *, generator) -> idx.
    progress : bool
        Show a progress bar over the token steps.
    compact_threshold : float
        In [0, 1]. Finished particles' KV-cache rows are dropped (one copy of the live rows) when
        they exceed this fraction of the rows the model steps; until then they are stepped and
        ignored. 0: as soon as one finishes; 1: never (every particle is stepped to the end). Only
        speed and memory depend on it: lower copies the cache more often, higher steps more dead rows.
    stratify : bool
        True (default): the m particles of a prompt that share a prefix (all N at the first token,
        the copies of one parent after resampling) draw their next tokens with one uniform in each
        of m equal strata of the proposal's CDF, dealt in random order (``stratified_uniforms``).
        Each particle's draw keeps its distribution, so log Z_hat stays unbiased in exp and the
        weights are unchanged; the group covers the proposal evenly instead of repeating its
        likeliest tokens, which lowers the variance of Z_hat. False: independent draws.
    """

    num_particles: int
    _: KW_ONLY  # the options by keyword: SMCConfig(64, ess_threshold=0.5)
    ess_threshold: float = 0.5
    resampling: object = "systematic"
    progress: bool = False
    compact_threshold: float = 0.25
    stratify: bool = True

    def __post_init__(self):
        object.__setattr__(self, "num_particles", check_count(self.num_particles, "num_particles"))
        e = self.ess_threshold
        if not is_real(e) or not (0 < e <= 1):
            raise ConfigError(f"ess_threshold must be in (0, 1], got {e!r}; 0.5 is the usual choice")
        c = self.compact_threshold
        if not is_real(c) or not (0 <= c <= 1):
            raise ConfigError(f"compact_threshold must be in [0, 1], got {c!r}; 0.25 is the default "
                              "(1 never drops finished particles' rows)")
        if not isinstance(self.stratify, bool):
            raise ConfigError(f"stratify must be a bool, got {self.stratify!r}")
        object.__setattr__(self, "ess_threshold", plain(e))
        object.__setattr__(self, "compact_threshold", plain(c))
        get_resampler(self.resampling)


@dataclass(frozen=True)
class SMCState:
    """Particles after step ``t`` (rows grouped by prompt). Steps never mutate a state."""

    t: int
    rows: LiveRows               # model states (m <= n rows) and the particle -> row map
    ids: torch.Tensor            # [n, T]
    mask: torch.Tensor           # [n, T]
    alive: torch.Tensor          # [n] still generating
    log_w: torch.Tensor          # [n] float64, since the last resampling
    log_psi: torch.Tensor        # [n] float64, current potential
    rewards: torch.Tensor        # [n] float64, NaN until finished
    log_z: torch.Tensor          # [P] float64, accumulated over resampling epochs
    q_state: object = None       # the proposal's own per-particle state (Proposal.start / advance / reindex)

    # the model states (rows ``rows.row``) and next-token log-probs [n, V] by particle (NaN: no row)
    prior_state = property(lambda self: self.rows.prior_state)
    proposal_state = property(lambda self: self.rows.proposal_state)
    prior_logp = property(lambda self: self.rows.per_particle())
    proposal_logp = property(lambda self: self.rows.per_particle(proposal=True))
