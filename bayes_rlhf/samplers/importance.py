"""Self-normalised importance sampling (SNIS) and sampling-importance-resampling (SIR).

For each prompt c, with a proposal q (the prior by default)::

    x_i ~ q(. | c),  i = 1..N
    log w_i = log pi0(x_i | c) + r(c, x_i) / beta - log q(x_i | c)
    log Z_hat = logsumexp_i(log w_i) - log N          # E[Z_hat] = Z (unbiased)
    E_pi*[f] ~= sum_i w_i f(x_i) / sum_j w_j            # consistent as N grows
    SIR: draw M indices from the normalised weights -> approximate pi* samples

With the prior as proposal, log w_i = r(c, x_i) / beta.
"""

from __future__ import annotations

import math
import time
from typing import Sequence

import torch
from tqdm.auto import tqdm

from bayes_rlhf._checks import check_generator
from bayes_rlhf.models.causal_lm import CausalLM
from bayes_rlhf.models.completions import Completions
from bayes_rlhf.samplers._common import (as_prompts, check_count, check_covers_prior, check_proposal_lm,
                                         check_target, log_z_per_prompt, prior_log_probs)
from bayes_rlhf.samplers.resampling import get_resampler
from bayes_rlhf.samplers.weighted import WeightedSamples
from bayes_rlhf.target import Target


def draw_proposals(target: Target, proposal: CausalLM, prompts: list[str], num_samples: int, *,
                   generator: torch.Generator | None = None, batch_size: int = 1024,
                   progress: bool = False) -> Completions:
    """``num_samples`` proposals per prompt, grouped by prompt, in chunks of <= batch_size rows."""
    per_chunk = max(1, batch_size // len(prompts))
    chunks = []
    with tqdm(total=num_samples * len(prompts), desc="proposals", disable=not progress) as bar:
        for s in range(0, num_samples, per_chunk):
            m = min(per_chunk, num_samples - s)
            chunks.append(proposal.sample(prompts, m, target.max_new_tokens, generator=generator))
            bar.update(m * len(prompts))
    if len(chunks) == 1:
        return chunks[0]
    pidx = torch.cat([c.prompt_index for c in chunks])
    order = torch.argsort(pidx, stable=True)
    return Completions(torch.cat([c.ids for c in chunks])[order], torch.cat([c.mask for c in chunks])[order],
                       torch.cat([c.log_probs for c in chunks])[order], pidx[order])


def weigh(target: Target, proposal: CausalLM, prompts: list[str], comps: Completions):
    """(log-weights [n], rewards [n], prior log-probs [n]) of proposals drawn from ``proposal``."""
    rows = [prompts[i] for i in comps.prompt_index.tolist()]
    lq = comps.log_probs.double().cpu()
    lp0 = prior_log_probs(target, proposal, rows, comps.ids, comps.mask, lq)
    r = target.rewards(rows, comps.ids, comps.mask)
    log_w = lp0 + r / target.beta - lq
    log_w = torch.where(torch.isnan(log_w), -math.inf, log_w)  # -inf prior and -inf reward
    return log_w, r, lp0


def importance_sample(target: Target, prompt: str | Sequence[str], num_samples: int,
                      *, proposal: CausalLM | None = None, generator: torch.Generator | None = None,
                      batch_size: int = 1024, progress: bool = False) -> WeightedSamples:
    """Self-normalised importance sampling of the posterior of ``target``.

    Parameters
    ----------
    target : Target
    prompt : str or sequence of str
        One prompt or P prompts; ``num_samples`` proposals are drawn for each.
    num_samples : int
        N >= 1 proposals per prompt.
    proposal : CausalLM, optional
        Any model sharing the prior's tokenizer (e.g. a fine-tuned policy); default the prior. It
        must be > 0 wherever the prior is: one truncated by its own top_k, or restricted to the
        support of a model other than a truncated target's prior, is refused (``ConfigError``).
    generator : torch.Generator, optional
        Source of all randomness (``torch.Generator().manual_seed(seed)``; a plain seed is a ConfigError).
    batch_size : int
        Rows sampled per call to the proposal.
    progress : bool
        Show a progress bar.

    Returns
    -------
    WeightedSamples
        N * P rows grouped by prompt, with log-weights log pi0 + r/beta - log q and the
        unbiased ``log_z`` estimate [P].

    Raises
    ------
    ConfigError, PromptError, TokenizerMismatchError
        Bad sizes, prompts, a proposal with another tokenizer or a truncated one (checked before sampling).
    NoMassError
        Every proposal of some prompt has zero target mass.
    """
    check_target(target)
    num_samples = check_count(num_samples, "num_samples")
    batch_size = check_count(batch_size, "batch_size")
    check_generator(generator)
    q = check_proposal_lm(target, proposal)
    check_covers_prior(target, q, "importance_sample")
    prompts = as_prompts(target, prompt)
    t0 = time.perf_counter()
    comps = draw_proposals(target, q, prompts, num_samples, generator=generator, batch_size=batch_size,
                           progress=progress)
    log_w, r, _ = weigh(target, q, prompts, comps)
    log_z = log_z_per_prompt(log_w, comps.prompt_index, len(prompts), prompts, "proposal")
    info = {"num_proposals": num_samples, "seconds": time.perf_counter() - t0}
    return WeightedSamples(comps.ids, comps.mask, log_w, r, log_z, comps.prompt_index, tuple(prompts),
                           target.prior.vocabulary, None, info)


def sampling_importance_resampling(target: Target, prompt: str | Sequence[str], num_proposals: int,
                                   num_samples: int, *, proposal: CausalLM | None = None,
                                   generator: torch.Generator | None = None,
                                   scheme: str = "multinomial") -> Completions:
    """SIR: ``importance_sample`` with ``num_proposals`` per prompt, then ``num_samples`` draws each.

    The draws are approximately pi*-distributed (exactly so as num_proposals -> infinity).
    Returns ``Completions`` grouped by prompt, ``source="resampled"``: they are not exact posterior
    samples, so ``upper_bound`` refuses them.
    """
    num_samples = check_count(num_samples, "num_samples")
    check_generator(generator)
    get_resampler(scheme)
    ws = importance_sample(target, prompt, num_proposals, proposal=proposal, generator=generator)
    return ws.resample(num_samples, generator=generator, scheme=scheme)
