"""Weighted atoms that every control solver works on, and the exponential tilt over them.

A table holds, for P groups (prompts), atoms x with a base log-mass and features phi(x)::

    exact:  atoms = every completion satisfying the constraint,  log_base = log pi0(x)
    snis:   atoms = N draws x_i ~ q per prompt (those satisfying the constraint),
            log_base = log pi0(x_i) - log q(x_i) - log N        (so logsumexp is an IS mean)
    smc:    atoms = N SMC particles for pi0 exp(lambda_k . phi), normalised weights w_i,
            log_base = log w_i - lambda_k . phi(x_i)             (pi0 up to a per-group constant)

The tilt by lambda is the same arithmetic for both::

    log Z_g(lambda) = logsumexp_{x in g} (log_base(x) + lambda . phi(x))
    p_g(x)          = exp(log_base(x) + lambda . phi(x) - log Z_g)
    mu_g(lambda)    = sum_x p_g(x) phi(x),   Cov_g = sum_x p_g(x) (phi - mu_g)(phi - mu_g)^T

A moment target's lambda and a budget's 1 / beta are both tilts of such a table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from bayes_rlhf.errors import ConfigError, SpaceTooLargeError
from bayes_rlhf.logweights import group_logsumexp, normalized_log_weights
from bayes_rlhf.rewards.base import TokenReward
from bayes_rlhf.target import Target

#: rows of features evaluated per reward call when a table is built
FEATURE_BATCH = 65536


class UnreachableError(ConfigError):
    """A moment or budget the target's support cannot reach; ``reachable`` holds what it can."""

    def __init__(self, message: str, reachable=None):
        super().__init__(message)
        self.reachable = reachable


@dataclass(frozen=True)
class AtomTable:
    """Atoms of P groups with base log-masses and features.

    Attributes
    ----------
    log_base : Tensor [N]
        float64, finite (atoms of zero mass are left out).
    features : Tensor [N, d]
        float64, finite.
    group : LongTensor [N]
        Group (prompt) of each atom, in 0..P-1.
    num_groups : int
        P; every group has at least one atom.
    num_draws : tuple of int, optional
        Draws per group (sampled tables; an atom-free draw counts here but has no row).
    """

    log_base: torch.Tensor
    features: torch.Tensor
    group: torch.Tensor
    num_groups: int
    num_draws: tuple | None = None

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    def rows(self, g: int) -> torch.Tensor:
        return torch.nonzero(self.group == g).squeeze(-1)


@dataclass(frozen=True)
class Tilt:
    """The tilt of a table by lambda: per-group log Z [P], atom probabilities [N], means [P, d]."""

    log_z: torch.Tensor
    probs: torch.Tensor
    means: torch.Tensor

    def covariance(self, table: AtomTable) -> torch.Tensor:
        """Prompt-averaged covariance of the features under the tilt, Tensor [d, d]."""
        centred = table.features - self.means[table.group]
        return (centred * self.probs[:, None]).t() @ centred / table.num_groups


def tilt(table: AtomTable, lam: torch.Tensor) -> Tilt:
    """The table tilted by ``lam`` [d] (see the module docstring)."""
    lw = table.log_base + table.features @ lam
    log_z = group_logsumexp(lw, table.group, table.num_groups)
    probs = (lw - log_z[table.group]).exp()
    means = torch.zeros((table.num_groups, table.dim), dtype=torch.float64).index_add_(
        0, table.group, probs[:, None] * table.features)
    return Tilt(log_z, probs, means)


def snis_standard_error(table: AtomTable, t: Tilt, values: torch.Tensor | None = None) -> torch.Tensor:
    """Delta-method SE of the prompt-averaged self-normalised mean of ``values`` [N, k] (default the
    features), Tensor [k]: ``sqrt(sum_g sum_x p_g(x)^2 (v - mu_g)^2) / P``."""
    values = table.features if values is None else values
    means = torch.zeros((table.num_groups, values.shape[1]), dtype=torch.float64).index_add_(
        0, table.group, t.probs[:, None] * values)
    var = ((t.probs[:, None] * (values - means[table.group])) ** 2).sum(0)
    return var.sqrt() / table.num_groups


def feature_ranges(table: AtomTable) -> list[tuple[float, float]]:
    """Per feature, (prompt-averaged min, prompt-averaged max) over the atoms: the closure of the
    moments a tilt can reach (the open interval is reachable; equal ends: the feature is constant)."""
    P, d = table.num_groups, table.dim
    lo = torch.full((P, d), math.inf, dtype=torch.float64).scatter_reduce(
        0, table.group[:, None].expand(-1, d), table.features, reduce="amin")
    hi = torch.full((P, d), -math.inf, dtype=torch.float64).scatter_reduce(
        0, table.group[:, None].expand(-1, d), table.features, reduce="amax")
    return [(float(a), float(b)) for a, b in zip(lo.mean(0), hi.mean(0))]


def build_table(log_base: Sequence[torch.Tensor], features: Sequence[torch.Tensor],
                num_draws: Sequence[int] | None = None) -> AtomTable:
    """An ``AtomTable`` from per-group base log-masses [K_g] and features [K_g, d]; atoms with
    log_base = -inf are dropped (a constraint's -inf, an unreachable draw)."""
    lbs, fs, gs = [], [], []
    for g, (lb, f) in enumerate(zip(log_base, features)):
        keep = torch.isfinite(lb)
        if not bool(keep.any()):
            raise ConfigError(f"group {g} has no atom of positive mass (every completion violates the "
                              "constraint, or no draw satisfied it): relax the constraint or draw more")
        lbs.append(lb[keep].double())
        fs.append(f[keep].double())
        gs.append(torch.full((int(keep.sum()),), g, dtype=torch.long))
    return AtomTable(torch.cat(lbs), torch.cat(fs), torch.cat(gs), len(lbs),
                     None if num_draws is None else tuple(int(n) for n in num_draws))


def feature_table(lm, prompt: str, ids: torch.Tensor, mask: torch.Tensor, features: Sequence) -> torch.Tensor:
    """Features [K, d] of one prompt's completions, evaluated in chunks of ``FEATURE_BATCH`` rows."""
    from bayes_rlhf.control.reward import feature_matrix

    chunks = [feature_matrix(features, lm, [prompt] * min(FEATURE_BATCH, ids.shape[0] - s),
                             ids[s: s + FEATURE_BATCH], mask[s: s + FEATURE_BATCH])
              for s in range(0, ids.shape[0], FEATURE_BATCH)]
    return torch.cat(chunks) if chunks else torch.zeros((0, len(features)), dtype=torch.float64)


METHODS = ("auto", "exact", "snis", "smc")


def zero_reward() -> TokenReward:
    """r = 0 for every completion (the prior itself as a Target)."""
    return TokenReward(lambda ids, mask: torch.zeros(ids.shape[0], dtype=torch.float64), name="zero")


def is_reward(obj) -> bool:
    return callable(obj) or hasattr(obj, "score_batch")


def check_prompts(target: Target, prompts) -> list[str]:
    """One prompt or a non-empty list of them, each readable by the prior (PromptError otherwise)."""
    from bayes_rlhf.samplers._common import as_prompts

    if not isinstance(prompts, str) and not all(isinstance(p, str) for p in prompts):
        raise ConfigError("prompts must be a string or a list of strings")
    return as_prompts(target, prompts)


def exact_feature_table(prior, prompts: list[str], T: int, features: list, constraint=None,
                        max_completions: int | None = None, progress: bool = False) -> AtomTable:
    """Each prompt enumerated once: atoms = completions meeting the constraint, log_base = log pi0."""
    from bayes_rlhf.exact.from_target import exact_posterior

    base = Target(prior, constraint if constraint is not None else zero_reward(), 1.0, T)
    lbs, fs = [], []
    for prompt in prompts:
        post = exact_posterior(base, prompt, max_completions=max_completions, progress=progress)
        lbs.append(post.prior_log_probs + post.rewards)  # rewards are 0 or -inf (the constraint)
        fs.append(feature_table(prior, prompt, post.completion_ids, post.mask, features))
    return build_table(lbs, fs)


def sampled_feature_table(prior, prompts: list[str], T: int, features: list, constraint, num_samples: int, *,
                          proposal, generator) -> AtomTable:
    """N proposals per prompt: atoms = draws meeting the constraint, log_base = log pi0 - log q - log N."""
    from bayes_rlhf.samplers.importance import importance_sample

    base = Target(prior, constraint if constraint is not None else zero_reward(), 1.0, T)
    ws = importance_sample(base, prompts, num_samples, proposal=proposal, generator=generator)
    lbs, fs = [], []
    for g, prompt in enumerate(prompts):
        rows = ws.rows(g)
        lbs.append(ws.log_weights[rows] - math.log(rows.numel()))
        fs.append(feature_table(prior, prompt, ws.ids[rows], ws.mask[rows], features))
    return build_table(lbs, fs, [num_samples] * len(prompts))


def smc_feature_table(prior, prompts: list[str], T: int, features: list, constraint, lam: torch.Tensor,
                      num_samples: int, *, generator) -> AtomTable:
    """N SMC particles per prompt for the tilt ``pi0 exp(lam . phi)`` (the constraint included), as atoms of
    pi0: log_base = log w - lam . phi, with w the particles' self-normalised weights. SMC runs with the
    ``"prefix"`` twist (the tilt's reward on prefixes), which resamples on the way."""
    from bayes_rlhf.control.reward import MomentReward
    from bayes_rlhf.samplers.smc import smc

    tilted = Target(prior, MomentReward(lam.tolist(), features, constraint), 1.0, T)
    ws = smc(tilted, prompts, num_samples, twist="prefix", generator=generator)
    lbs, fs = [], []
    for g, prompt in enumerate(prompts):
        rows = ws.rows(g)
        phi = feature_table(prior, prompt, ws.ids[rows], ws.mask[rows], features)
        lw = ws.log_weights[rows].double()
        lbs.append(normalized_log_weights(lw) - phi @ lam)
        fs.append(phi)
    return build_table(lbs, fs, [num_samples] * len(prompts))


def _reward_atoms(log_base: torch.Tensor, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log_base, rewards [K, 1]) with the atoms of reward -inf (a hard constraint) given no mass."""
    finite = torch.isfinite(rewards)
    return torch.where(finite, log_base, -math.inf), torch.where(finite, rewards, 0.0)[:, None]


def held_posteriors(target: Target, posteriors) -> dict:
    """{prompt: ExactPosterior} from tables a caller already holds (None, one, a sequence or a dict), each
    checked to be an enumeration of ``target.prior`` with T = ``target.max_new_tokens`` (any beta)."""
    from bayes_rlhf.exact.matching import check_prior, check_rewards
    from bayes_rlhf.exact.posterior import ExactPosterior

    if posteriors is None:
        return {}
    if isinstance(posteriors, ExactPosterior):
        posteriors = [posteriors]
    items = list(posteriors.values()) if isinstance(posteriors, dict) else list(posteriors)
    for post in items:
        if not isinstance(post, ExactPosterior):
            raise ConfigError(f"posteriors must be ExactPosterior tables (one, a list or a dict), got "
                              f"{type(post).__name__}")
        if post.completion_ids.shape[1] != target.max_new_tokens or \
                not post.vocabulary.same_as(target.prior.vocabulary):
            raise ConfigError(f"the posterior of {post.prompt!r} is not a table of this target (T = "
                              f"{post.completion_ids.shape[1]}, or another vocabulary); pass exact_posterior(target, "
                              f"prompt) tables of its prior, reward and max_new_tokens={target.max_new_tokens}")
        check_prior(target, post.prompt, post, "the posterior")  # another prior or reward: another pi*(beta)
        check_rewards(target, post.prompt, post, "the posterior")
    return {post.prompt: post for post in items}


def exact_reward_table(target: Target, prompts: list[str], max_completions: int | None = None,
                       progress: bool = False, posteriors: dict | None = None) -> AtomTable:
    """The one-feature table (phi = r) of each prompt's enumerated posterior; log_base = log pi0.

    ``posteriors`` ({prompt: ExactPosterior}, of the target's prior and reward at any beta) are used as
    they are; only the prompts they lack are enumerated."""
    from bayes_rlhf.exact.from_target import exact_posterior

    held = posteriors or {}
    posts = [held[p] if p in held else exact_posterior(target, p, max_completions=max_completions, progress=progress)
             for p in prompts]
    atoms = [_reward_atoms(post.prior_log_probs, post.rewards) for post in posts]
    return build_table([a for a, _ in atoms], [f for _, f in atoms])


def sampled_reward_table(target: Target, prompts: list[str], num_samples: int, *, generator) -> AtomTable:
    """The one-feature table (phi = r) of N prior draws per prompt; log_base = -log N."""
    from bayes_rlhf.samplers.importance import importance_sample

    ws = importance_sample(Target(target.prior, target.reward, 1.0, target.max_new_tokens), prompts, num_samples,
                           generator=generator)
    atoms = [_reward_atoms(torch.full((ws.rows(g).numel(),), -math.log(num_samples), dtype=torch.float64),
                           ws.rewards[ws.rows(g)]) for g in range(len(prompts))]
    return build_table([a for a, _ in atoms], [f for _, f in atoms], [num_samples] * len(prompts))


def resolve_method(method: str, prior, T: int, max_completions: int | None = None) -> str:
    """'auto' -> 'exact' when the exact engine's size guard accepts the space, else 'snis'."""
    from bayes_rlhf.exact.enumerate import check_space

    if method not in METHODS:
        raise ConfigError(f"method must be one of {METHODS}, got {method!r}")
    if method != "auto":
        return method
    try:
        check_space(prior, T, max_completions)
    except SpaceTooLargeError:
        return "snis"
    return "exact"
