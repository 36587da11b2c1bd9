"""Sampled evaluation of a policy for models too large to enumerate: the ELBO/EUBO sandwich.

With lw(x) = log pi0(x) + r(x) / beta - log q(x)::

    ELBO = E_q[lw]  <=  log Z  <=  EUBO = E_pi*[lw]
    KL(q || pi*) = log Z - ELBO,   KL(pi* || q) = EUBO - log Z,   both <= EUBO - ELBO

The ELBO comes from fresh policy draws at each evaluation; the EUBO from a fixed set of
posterior draws (exact, rejection, or weighted SMC / importance samples) given once, since pi*
does not change during training. log Z is the importance estimate from the policy draws.
Evaluation uses its own generator, so attaching it does not change the training run.
``SandwichEvaluator`` is an ``Evaluator`` (``evaluation.py``): check, prepare, evaluate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from bayes_rlhf.diagnostics.sampled import forward_kl, reverse_kl
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.models.completions import Completions


@dataclass
class SandwichEvaluator:
    """Sampled KL estimates and the EUBO - ELBO bound, averaged over prompts.

    Parameters
    ----------
    posterior_samples : dict
        prompt -> ``Completions`` of posterior draws, or ``(Completions, log_weights [n])`` for
        weighted draws (SMC, importance sampling).
    num_policy_samples : int
        Policy draws per prompt and evaluation for the ELBO.
    seed : int
        Seed of the evaluator's own generator.
    """

    posterior_samples: dict
    num_policy_samples: int = 256
    seed: int = 0
    _gen: torch.Generator = field(init=False, repr=False)
    #: the posterior samples are of pi* at the target's beta: an adaptive KL controller is refused
    follows_beta: ClassVar[bool] = False

    def __post_init__(self):
        if not isinstance(self.posterior_samples, dict) or not self.posterior_samples:
            raise ConfigError("SandwichEvaluator.posterior_samples must be a non-empty dict prompt -> Completions")
        for p, s in self.posterior_samples.items():
            c = s[0] if isinstance(s, tuple) else s
            if not isinstance(c, Completions):
                raise ConfigError(f"SandwichEvaluator.posterior_samples[{p!r}] must be Completions or "
                                  f"(Completions, log_weights), got {type(c).__name__}")
        if not isinstance(self.num_policy_samples, int) or self.num_policy_samples < 2:
            raise ConfigError(f"SandwichEvaluator.num_policy_samples must be an integer >= 2, "
                              f"got {self.num_policy_samples!r}")
        self._gen = torch.Generator().manual_seed(self.seed)

    def check(self, prompts) -> None:
        """ConfigError if some posterior samples are for a prompt that is not trained on."""
        unknown = sorted(set(self.posterior_samples) - set(prompts))
        if unknown:
            raise ConfigError(f"the evaluator has posterior samples for {unknown}, which are not training prompts")

    def prepare(self, target, prompts) -> dict:
        """Nothing to prepare (the samples are given); no exact posteriors to share: {}. The samples
        are checked against the target: its max_new_tokens and its vocabulary (ConfigError)."""
        self.check(prompts)
        T, V = target.max_new_tokens, target.prior.vocab_size
        for prompt, s in self.posterior_samples.items():
            c = s[0] if isinstance(s, tuple) else s
            if c.ids.shape[1] != T:
                raise ConfigError(f"the posterior samples for {prompt!r} have {c.ids.shape[1]} token positions, the "
                                  f"target max_new_tokens={T}: draw them from this target")
            if c.ids.numel() and (int(c.ids.max()) >= V or int(c.ids.min()) < 0):
                raise ConfigError(f"the posterior samples for {prompt!r} hold token ids outside the prior's "
                                  f"vocabulary of {V}: they come from another tokenizer")
        return {}

    def evaluate(self, policy, target) -> dict:
        """Averages over prompts of elbo, eubo (with standard errors elbo_se, eubo_se),
        kl_sandwich (= eubo - elbo) and the estimated kl_q_posterior_est / kl_posterior_q_est
        (log Z from importance sampling)."""
        rows = []
        with torch.no_grad():
            for prompt, s in self.posterior_samples.items():
                c, lw = (s[0], s[1]) if isinstance(s, tuple) else (s, None)
                q = policy.sample(prompt, self.num_policy_samples, target.max_new_tokens, generator=self._gen)
                lq = policy.score(prompt, q.ids, q.mask).sum(-1)
                rev = reverse_kl(lq, target.prior.score(prompt, q.ids, q.mask).sum(-1),
                                 target.rewards(prompt, q.ids, q.mask), target.beta)
                fwd = forward_kl(policy.score(prompt, c.ids, c.mask).sum(-1),
                                 target.prior.score(prompt, c.ids, c.mask).sum(-1),
                                 target.rewards(prompt, c.ids, c.mask), target.beta, log_weights=lw,
                                 log_z=rev.log_z.value, log_z_stderr=rev.log_z.stderr)
                rows.append({"elbo": rev.elbo.value, "elbo_se": rev.elbo.stderr, "eubo": fwd.eubo.value,
                             "eubo_se": fwd.eubo.stderr,
                             "kl_sandwich": fwd.eubo.value - rev.elbo.value, "kl_q_posterior_est": rev.kl.value,
                             "kl_posterior_q_est": fwd.kl.value})
        out = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
        for k in ("elbo_se", "eubo_se"):  # standard error of the average over prompts
            out[k] = sum(r[k] ** 2 for r in rows) ** 0.5 / len(rows)
        return out
