"""Contrastive twist learning (CTL): fit a ``LearnedTwist`` from samples, without enumeration.

SMC at step t targets sigma_t over the *states* of a particle: an unfinished prefix x_{1:t}
(no EOS yet, t < T) or a completion x that already ended (at EOS, len(x) <= t)::

    sigma_t(x_{1:t}) ∝ pi0(x_{1:t}) psi_t(x_{1:t})     unfinished   (psi_t = exp(f_theta(c, x_{1:t})))
    sigma_t(x)       ∝ pi0(x) exp(r(c, x) / beta)       finished     (no parameter)

With psi_t = exp(V_t / beta), pi0(x_{1:t}) psi_t = Z pi*(x_{1:t}), so sigma_t is the pi*
marginal of the step-t state. CTL (Zhao, Brekelmans, Makhzani & Grosse, ICML 2024) minimises
L(theta) = sum_t KL(pi*_t || sigma_t^theta), t = 1..T-1; only psi_t depends on theta, so::

    grad L = sum_t ( E_{sigma_t}[1{unfinished} grad log psi_t] - E_{pi*}[1{unfinished} grad log psi_t] )
    L = sum_t ( -E_{pi*}[1{unfinished} log psi_t] + log E_{pi0}[w_t] ) + const,
        w_t = psi_t(x_{1:t}) if x is unfinished at t, else exp(r(x) / beta)

One step (per prompt; the gradient and the loss are averaged over prompts)::

    positives  x_i, lw_i ~ pi*   (importance_sample: lw = r / beta; SMC: final weights; exact or
                                  rejection samples: lw = 0; or any callable)
    negatives  y_j ~ pi0, lw_jt = log w_t(y_j)               ("prior": SNIS with weights w_t)
           or  y_j, lw_jt = particles and log-weights of an SMC run with the current twist
               after token t                                  ("smc": already ~ sigma_t)
    f = twist.prefix_log_potentials(prompt + ids)            # one GRU pass: log psi_t for all t
    surrogate = sum_t [ sum_j softmax_j(lw_jt) 1{y_j unfinished at t} f_t(y_j)      (weights detached)
                      - sum_i softmax_i(lw_i)  1{x_i unfinished at t} f_t(x_i) ]
    theta <- Adam(theta, grad surrogate)                      # grad surrogate = the CTL gradient

Both terms are self-normalised, so consistent (biased by O(1/n) at finite n). The loss column
of the history (``negative="prior"`` only) is L up to the theta-independent constant. The sample
sets and the surrogate (``ContrastSet``, ``ctl_surrogate``) are in ``contrast.py``; this module
holds the settings, the draws of one step and the loop.

The constant in psi. Replacing log psi_t by log psi_t + c_t changes no SMC estimate in
expectation: a particle's incremental weights psi_t / psi_{t-1} telescope to
pi0(x) exp(r / beta) / q(x) for whatever positive twist is used, so exp(log Z_hat) stays
unbiased for Z, and particles still generating at step t all carry the same c_t, which
cancels when they are normalised against each other (resampling, the twisted proposal among
continuing tokens). c_t only weighs states that have ended (EOS: potential exp(r / beta),
no c_t) against those still generating, which affects efficiency, not correctness. That is
why the states above include ended completions: their mass pins c_t down and pulls
log psi_t toward V_t / beta itself, not only up to c_t. Where nothing can end before T, c_t
is unidentified and irrelevant (the loss and its gradient do not see it).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from bayes_rlhf._checks import check_generator, is_real, plain
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.logweights import kish_ess
from bayes_rlhf.models.completions import Completions
from bayes_rlhf.samplers._common import as_prompts, check_count, check_target
from bayes_rlhf.samplers.contrast import ContrastSet, ctl_surrogate
from bayes_rlhf.samplers.importance import importance_sample
from bayes_rlhf.samplers.learned_twist import LearnedTwist
from bayes_rlhf.samplers.smc import SMC, smc
from bayes_rlhf.samplers.smc_state import SMCConfig
from bayes_rlhf.samplers.weighted import WeightedSamples
from bayes_rlhf.target import Target

POSITIVES = ("is", "smc", "twisted-smc")
NEGATIVES = ("prior", "smc")


@dataclass(frozen=True, kw_only=True)
class CTLConfig:
    """Settings of contrastive twist learning (``fit_twist_ctl``), given by keyword.

    Parameters
    ----------
    steps : int
        Optimiser steps (>= 1); every step draws fresh positives and negatives.
    num_samples : int
        Positive samples per prompt and step (>= 1).
    num_negative : int, optional
        Negative samples (or SMC particles) per prompt and step; default ``num_samples``.
    positive : str, callable, WeightedSamples or Completions
        "is" (prior samples weighted by exp(r / beta)), "smc" (bootstrap SMC), "twisted-smc"
        (SMC with the current twist and the twisted proposal), a callable
        ``f(prompts, num_samples, generator) -> WeightedSamples | Completions``, or a fixed
        sample set used at every step. ``Completions`` count as equally weighted (exact or
        rejection samples); their ``log_probs`` are ignored.
    negative : str
        "prior": prior samples self-normalised with the twist's weights; "smc": the particles
        of a bootstrap SMC run with the current twist, read after every token.
    lr : float
        Adam learning rate (> 0).
    max_grad_norm : float, optional
        Clip the gradient norm to this (> 0); None: no clipping.
    progress : bool
        Show a progress bar over the steps.
    """

    steps: int = 200
    num_samples: int = 256
    num_negative: int | None = None
    positive: object = "is"
    negative: str = "prior"
    lr: float = 1e-2
    max_grad_norm: float | None = None
    progress: bool = False

    def __post_init__(self):
        for name in ("steps", "num_samples") + (("num_negative",) if self.num_negative is not None else ()):
            object.__setattr__(self, name, check_count(getattr(self, name), name))
        p = self.positive
        if isinstance(p, str) and p not in POSITIVES:
            raise ConfigError(f"positive={p!r} is not known; use one of {POSITIVES}, a callable "
                              "f(prompts, num_samples, generator) or a WeightedSamples/Completions")
        if not isinstance(p, (str, WeightedSamples, Completions)) and not callable(p):
            raise ConfigError(f"positive must be a name, a callable or samples, got {type(p).__name__}")
        if self.negative not in NEGATIVES:
            raise ConfigError(f"negative={self.negative!r} is not known; use one of {NEGATIVES}")
        if not _positive_number(self.lr):
            raise ConfigError(f"lr must be a finite number > 0, got {self.lr!r}; 1e-2 suits small twists")
        if self.max_grad_norm is not None and not _positive_number(self.max_grad_norm):
            raise ConfigError(f"max_grad_norm must be None or a finite number > 0, got {self.max_grad_norm!r}")
        object.__setattr__(self, "lr", plain(self.lr))
        object.__setattr__(self, "max_grad_norm", plain(self.max_grad_norm))


def _positive_number(x) -> bool:
    return is_real(x) and math.isfinite(x) and x > 0


def draw_positives(config: CTLConfig, twist, target: Target, prompts: list[str], *,
                   generator: torch.Generator | None = None) -> tuple[ContrastSet, float]:
    """Posterior samples for one step as a ContrastSet, and the mean Kish ESS of their weights."""
    p, n, T = config.positive, config.num_samples, target.max_new_tokens
    if p == "is":
        samples = importance_sample(target, prompts, n, generator=generator)
    elif p == "smc":
        samples = smc(target, prompts, n, generator=generator)
    elif p == "twisted-smc":
        samples = smc(target, prompts, n, proposal="twisted", twist=twist, generator=generator)
    elif isinstance(p, (WeightedSamples, Completions)):
        samples = p
    else:
        samples = p(list(prompts), n, generator)
        _check_samples(samples, prompts, T, "the positive callable's result")
    s = ContrastSet.positive(samples, T)
    ess = [kish_ess(s.log_w[s.prompt_index == i, 0]) for i in range(len(prompts))]
    return s, sum(ess) / len(ess)


def draw_negatives(config: CTLConfig, twist, target: Target, prompts: list[str], *,
                   generator: torch.Generator | None = None) -> ContrastSet:
    """Samples of sigma_t^theta for one step: tilted prior samples or SMC particles per token."""
    m = config.num_negative or config.num_samples
    if config.negative == "prior":
        ws = importance_sample(target, prompts, m, generator=generator)
        return ContrastSet.prior(ws.ids, ws.mask, ws.rewards, ws.prompt_index, target.beta)
    T = target.max_new_tokens
    sampler = SMC(target, prompts, SMCConfig(m), twist=twist)
    state, blocks = sampler.init(), []
    for t in range(1, T):
        state, _ = sampler.step(state, generator=generator)
        log_w = torch.full((state.ids.shape[0], T - 1), -math.inf, dtype=torch.float64)
        log_w[:, t - 1] = state.log_w
        unf = torch.zeros((state.ids.shape[0], T - 1), dtype=torch.bool)
        unf[:, t - 1] = state.alive
        blocks.append((state.ids, unf, log_w, sampler.group))
        if not state.alive.any():
            break
    return ContrastSet(*(torch.cat([b[k] for b in blocks]) for k in range(4)))


def _check_samples(samples, prompts: Sequence[str], T: int, what: str) -> None:
    if not isinstance(samples, (WeightedSamples, Completions)):
        raise ConfigError(f"{what} must be WeightedSamples or Completions, got {type(samples).__name__}")
    if samples.ids.shape[1] != T:
        raise ConfigError(f"{what} has completions of {samples.ids.shape[1]} tokens, the target "
                          f"max_new_tokens={T}; draw them from the same target")
    if isinstance(samples, WeightedSamples) and tuple(samples.prompts) != tuple(prompts):
        raise ConfigError(f"{what} is for prompts {samples.prompts}, not {tuple(prompts)}; pass the same prompts")
    idx = samples.prompt_index
    if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= len(prompts):
        raise ConfigError(f"{what} has prompt_index outside 0..{len(prompts) - 1} (or no rows)")
    for p in range(len(prompts)):
        if not bool((idx == p).any()):
            raise ConfigError(f"{what} has no sample for prompt {prompts[p]!r}; give samples for every prompt")


def _check_twist(twist, target: Target) -> None:
    if not isinstance(twist, LearnedTwist):
        raise ConfigError(f"twist must be a LearnedTwist, got {type(twist).__name__}")
    if twist.embed.num_embeddings < target.prior.vocab_size:
        raise ConfigError(f"twist vocab_size={twist.embed.num_embeddings} is smaller than the prior's "
                          f"({target.prior.vocab_size}); build LearnedTwist(target.prior.vocab_size)")
    if target.max_new_tokens < 2:
        raise ConfigError("max_new_tokens=1 has no intermediate step to twist; use max_new_tokens >= 2")


def fit_twist_ctl(twist: LearnedTwist, target: Target, prompts: str | Sequence[str], *, steps: int = 200,
                  num_samples: int = 256, num_negative: int | None = None, positive="is", negative: str = "prior",
                  lr: float = 1e-2, max_grad_norm: float | None = None, progress: bool = False,
                  generator: torch.Generator | None = None) -> list[dict]:
    """Fit ``twist`` to the soft values of ``target`` by contrastive twist learning (no enumeration).

    Parameters
    ----------
    twist : LearnedTwist
        Trained in place (its parameters change); any device and dtype.
    target : Target
    prompts : str or sequence of str
    steps, num_samples, num_negative, positive, negative, lr, max_grad_norm, progress
        See ``CTLConfig`` (the same fields in the same order, all checked before any sampling).
    generator : torch.Generator, optional
        Source of all sampling randomness (``torch.Generator().manual_seed(seed)``, not a seed).

    Returns
    -------
    list of dict, one per step
        "step", "loss" (sum_t KL(pi*_t || sigma_t) up to a constant, prior negatives only),
        "gap" (E_sigma - E_pi* of sum_t log psi_t), "ess" (mean Kish ESS of the positive weights),
        "grad_norm", "seconds".

    Raises
    ------
    ConfigError
        A bad setting, twist or sample set (names the field). PromptError for bad prompts.
    """
    config = CTLConfig(steps=steps, num_samples=num_samples, num_negative=num_negative, positive=positive,
                       negative=negative, lr=lr, max_grad_norm=max_grad_norm, progress=progress)
    check_generator(generator)
    check_target(target)
    prompts = as_prompts(target, prompts)
    _check_twist(twist, target)
    if isinstance(config.positive, (WeightedSamples, Completions)):
        _check_samples(config.positive, prompts, target.max_new_tokens, "positive")
    opt = torch.optim.Adam(twist.parameters(), lr=config.lr)
    history = []
    for step in tqdm(range(config.steps), desc="CTL", disable=not config.progress):
        t0 = time.perf_counter()
        with torch.no_grad():
            pos, ess = draw_positives(config, twist, target, prompts, generator=generator)
            neg = draw_negatives(config, twist, target, prompts, generator=generator)
        surrogate, info = ctl_surrogate(twist, target, prompts, pos, neg)
        opt.zero_grad()
        surrogate.backward()
        norm = torch.nn.utils.clip_grad_norm_(twist.parameters(), config.max_grad_norm or math.inf)
        opt.step()
        history.append({"step": step, **info, "ess": ess, "grad_norm": float(norm),
                        "seconds": time.perf_counter() - t0})
    return history


__all__ = ["CTLConfig", "ContrastSet", "ctl_surrogate", "draw_positives", "draw_negatives", "fit_twist_ctl",
           "POSITIVES", "NEGATIVES"]
