"""The pyro bridge: a CausalLM as a pyro distribution over completions, and the posterior as a model.

The KL-regularised RL problem written as a probabilistic program::

    def model():                                   # unnormalised pi*(x | c)
        x = pyro.sample("x", CompletionDistribution(prior, c, T))
        pyro.factor("reward", r(c, x) / beta)
    def guide():                                   # the policy q_theta(x | c)
        pyro.module("policy", policy.model)
        pyro.sample("x", CompletionDistribution(policy, c, T))

Trace_ELBO on this pair is E_q[log pi0 + r / beta - log q] = (E_q[r] - beta KL(q || pi0)) / beta,
the RL objective divided by beta, and its maximiser is pi*. ``pyro.infer.Importance`` with no
guide is importance sampling from the prior; its log-normaliser estimates log Z.
A completion is a LongTensor [..., T] read up to its first EOS (the rest is padding).
"""

from __future__ import annotations

import math
from typing import Callable

import pyro
import pyro.distributions as pdist
import torch
from pyro.distributions import constraints

from bayes_rlhf.errors import ConfigError
from bayes_rlhf.logweights import log_mean_exp
from bayes_rlhf.models.causal_lm import CausalLM
from bayes_rlhf.samplers._common import as_prompts, check_count, check_proposal_lm, check_target
from bayes_rlhf.samplers.weighted import WeightedSamples
from bayes_rlhf.target import Target


def completion_mask(ids: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """BoolTensor [..., T]: True up to and including the first EOS of each completion."""
    if eos_token_id is None:
        return torch.ones(ids.shape, dtype=torch.bool, device=ids.device)
    is_eos = (ids == eos_token_id).long()
    return (is_eos.cumsum(-1) - is_eos) == 0


class CompletionDistribution(pdist.TorchDistribution):
    """A CausalLM's distribution over completions of one prompt, as a pyro distribution.

    Parameters
    ----------
    lm : CausalLM
    prompt : str
    max_new_tokens : int
    generator : torch.Generator, optional
        Source of randomness for ``sample`` (pyro's global RNG when None).
    differentiable : bool
        Whether ``log_prob`` keeps the graph to the model's parameters (True for a guide).

    ``sample(shape)`` returns LongTensor [*shape, T] (padded with ``lm.pad_id``);
    ``log_prob(x)`` returns log q(x) [*x.shape[:-1]] (tokens after the first EOS ignored).
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.nonnegative_integer, 1)
    has_rsample = False

    def __init__(self, lm: CausalLM, prompt: str, max_new_tokens: int, *, generator: torch.Generator | None = None,
                 differentiable: bool = True, validate_args=None):
        if not isinstance(lm, CausalLM):
            raise ConfigError(f"CompletionDistribution needs a CausalLM, got {type(lm).__name__}")
        check_count(max_new_tokens, "max_new_tokens")
        lm.check_prompt(prompt, max_new_tokens)
        self.lm, self.prompt, self.T = lm, prompt, max_new_tokens
        self.generator, self.differentiable = generator, differentiable
        super().__init__(batch_shape=torch.Size(), event_shape=torch.Size([max_new_tokens]),
                         validate_args=validate_args)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        n = max(1, math.prod(shape))
        comps = self.lm.sample(self.prompt, n, self.T, generator=self.generator)
        return comps.ids.reshape(*shape, self.T)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        flat = value.reshape(-1, self.T).long().cpu()
        mask = completion_mask(flat, self.lm.eos_token_id)
        if self.differentiable:
            lp = self.lm.token_log_probs(self.prompt, flat, mask).sum(-1)
        else:
            lp = self.lm.score(self.prompt, flat, mask).sum(-1)
        return lp.reshape(value.shape[:-1])


def posterior_model(target: Target, prompt: str, *, generator: torch.Generator | None = None) -> Callable:
    """A pyro model of the unnormalised posterior: x ~ pi0(. | prompt), factor r(x) / beta.

    Works inside plates and with vectorised particles (x then has leading batch dims).
    """
    check_target(target)
    prompt = as_prompts(target, prompt)[0]
    T = target.max_new_tokens

    def model():
        x = pyro.sample("x", CompletionDistribution(target.prior, prompt, T, generator=generator, differentiable=False))
        flat = x.reshape(-1, T).long().cpu()
        r = target.rewards(prompt, flat, completion_mask(flat, target.prior.eos_token_id))
        pyro.factor("reward", (r / target.beta).reshape(x.shape[:-1]))
        return x

    return model


def policy_guide(target: Target, prompt: str, policy: CausalLM, *, generator: torch.Generator | None = None,
                 name: str = "policy") -> Callable:
    """A pyro guide sampling x ~ policy(. | prompt); the policy's parameters are registered as ``name``."""
    check_target(target)
    policy = check_proposal_lm(target, policy)
    prompt = as_prompts(target, prompt)[0]
    T = target.max_new_tokens

    def guide():
        pyro.module(name, policy.model)
        return pyro.sample("x", CompletionDistribution(policy, prompt, T, generator=generator, differentiable=True))

    return guide


def pyro_importance(target: Target, prompt: str, num_samples: int, *, guide: Callable | None = None,
                    generator: torch.Generator | None = None) -> WeightedSamples:
    """Vectorised importance sampling by pyro (guide None: the prior), as ``WeightedSamples``.

    Uses ``pyro.infer.importance.vectorized_importance_weights``; ``log_z`` is pyro's
    log-normaliser estimate logsumexp(log w) - log N.
    """
    from pyro.infer.importance import vectorized_importance_weights

    check_count(num_samples, "num_samples")
    model = posterior_model(target, prompt, generator=generator)
    guide = guide if guide is not None else _prior_guide(target, prompt, generator)
    with torch.no_grad():
        log_w, model_trace, _ = vectorized_importance_weights(model, guide, num_samples=num_samples,
                                                              max_plate_nesting=0)
    ids = model_trace.nodes["x"]["value"].reshape(num_samples, target.max_new_tokens).long().cpu()
    mask = completion_mask(ids, target.prior.eos_token_id)
    r = target.rewards(prompt, ids, mask)
    log_w = log_w.detach().double().cpu()
    log_z = log_mean_exp(log_w).reshape(1)
    return WeightedSamples(ids, mask, log_w, r, log_z, torch.zeros(num_samples, dtype=torch.long), (prompt,),
                           target.prior.vocabulary, None, {"source": "pyro.infer.importance"})


def _prior_guide(target: Target, prompt: str, generator) -> Callable:
    T = target.max_new_tokens

    def guide():
        return pyro.sample("x", CompletionDistribution(target.prior, prompt, T, generator=generator,
                                                       differentiable=False))

    return guide


def elbo(target: Target, prompt: str, policy: CausalLM, *, num_particles: int = 1000,
         generator: torch.Generator | None = None) -> float:
    """pyro's Trace_ELBO estimate of (E_q[r] - beta KL(q || pi0)) / beta for q = ``policy``."""
    check_count(num_particles, "num_particles")
    loss = pyro.infer.Trace_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=0)
    with torch.no_grad():
        return -float(loss.loss(posterior_model(target, prompt, generator=generator),
                                policy_guide(target, prompt, policy, generator=generator)))


def fit_policy_svi(target: Target, prompt: str, policy: CausalLM, *, steps: int = 100, lr: float = 1e-3,
                   num_particles: int = 64, generator: torch.Generator | None = None) -> list[float]:
    """Fit ``policy`` to pi* with pyro's SVI and Trace_ELBO (score-function gradients).

    Updates the policy's weights in place; returns the loss (-ELBO estimate) per step.
    """
    check_count(steps, "steps")
    check_count(num_particles, "num_particles")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ConfigError(f"lr must be > 0, got {lr!r}")
    model = posterior_model(target, prompt, generator=generator)
    guide = policy_guide(target, prompt, policy, generator=generator)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": lr}),
                         pyro.infer.Trace_ELBO(num_particles=num_particles, vectorize_particles=True,
                                               max_plate_nesting=0))
    was_training = policy.model.training
    policy.model.train()
    try:
        return [float(svi.step()) for _ in range(steps)]
    finally:
        policy.model.train(was_training)
