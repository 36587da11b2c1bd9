"""llamppl and genlm-control on the benchmark's tasks, over the shared HF model (``smc_shared``).

Both peers run the HF model through genlm-backend's ``AsyncTransformer``, built here around the
shared model object, with its ``batch_size`` set to N (default 20) and its caches cleared
before every run. Each peer runs in two modes:

- llamppl ``smc_standard``: "bootstrap" samples ``next_token()`` and conditions on the token
  being allowed; "masked" first observes ``mask_dist(allowed) = True`` (the weight gains the
  allowed mass, the next token is drawn from the masked distribution), then samples.
- genlm-control ``SMC``: "bootstrap" is ``direct_token_sampler(llm)`` with the lipogram as a
  critic (a prefix potential, so it twists every step); "awrs" is the ``AWRS`` token sampler
  with the lipogram as its Boolean condition (exact, properly weighted constrained sampling).

Task A (EOS or T tokens) and task B (must end with EOS within T) in each library's own terms:
llamppl finishes at EOS or T tokens; on B it observes EOS as token T (weight gains its
probability, as genlm-control does). genlm-control forces EOS at ``max_tokens`` with that weight
(B: ``max_tokens = T``); on A, ``terminate_when`` closes a sequence after T tokens with no
correction (``max_tokens = T + 1`` then never binds).

Every runner is ``once(seed) -> log Z_hat``; seeds go to the global numpy and torch generators
(both peers draw from them) and to AWRS's own seed.
"""

from __future__ import annotations

import asyncio
import math

import numpy as np
import torch


def _async_lm(shared):
    from genlm.backend.llm import AsyncTransformer

    return AsyncTransformer(shared.model, shared.tokenizer, batch_size=20)


class LlamPPL:
    """llamppl's SMC over the shared model: ``runner(task, mode, N, T, prompt, bad)``."""

    modes = ("bootstrap", "masked")

    def __init__(self, shared):
        from llamppl import CachedCausalLM

        self.backend = _async_lm(shared)
        self.lm = CachedCausalLM(self.backend)

    def runner(self, task: str, mode: str, N: int, T: int, prompt: str, bad: torch.Tensor):
        from llamppl import LMContext, Model, smc_standard

        lm, eos = self.lm, self.lm.tokenizer.eos_token_id
        bad_set = frozenset(torch.nonzero(bad).squeeze(-1).tolist())
        allowed = frozenset(range(bad.numel())) - bad_set
        masked, must_end = mode == "masked", task == "B"

        class Lipogram(Model):
            def __init__(self):
                super().__init__()
                self.context = LMContext(lm, prompt)
                self.n = 0

            async def step(self):
                if must_end and self.n == T - 1:  # the last token must be EOS: weight by its probability
                    await self.observe(self.context.next_token(), eos)
                    self.finish()
                    return
                if masked:
                    await self.observe(self.context.mask_dist(allowed), True)
                token = await self.sample(self.context.next_token())
                self.n += 1
                if not masked:
                    self.condition(token.token_id not in bad_set)
                if token.token_id == eos or self.n >= T:
                    if must_end and token.token_id != eos:
                        self.condition(False)
                    self.finish()

        def once(seed: int) -> float:
            np.random.seed(seed)  # llamppl draws from numpy's global generator
            self.backend.batch_size = N
            lm.clear_cache()
            particles = asyncio.run(smc_standard(Lipogram(), N, 0.5, resampling_method="multinomial"))
            w = torch.tensor([p.weight for p in particles], dtype=torch.float64)
            return float(torch.logsumexp(w, 0) - math.log(N))

        return once


class GenLM:
    """genlm-control's SMC over the shared model: ``runner(task, mode, N, T, prompt, bad)``."""

    modes = ("bootstrap", "awrs")

    def __init__(self, shared):
        from genlm.control import PromptedLLM

        self.backend = _async_lm(shared)
        self.llm = PromptedLLM(self.backend)

    def runner(self, task: str, mode: str, N: int, T: int, prompt: str, bad: torch.Tensor):
        from genlm.control import AWRS, direct_token_sampler
        from genlm.control.potential import Potential

        llm = self.llm
        llm.set_prompt_from_str(prompt)
        bad_set = frozenset(torch.nonzero(bad).squeeze(-1).tolist())

        class NoLetterE(Potential):
            """0 if no token of the context is forbidden (by id), else -inf; EOS is allowed."""

            async def prefix(self, context):
                return -math.inf if any(t.token_id in bad_set for t in context) else 0.0

            async def complete(self, context):
                return await self.prefix(context)

        condition = NoLetterE(llm.vocab)
        if task == "A":
            kwargs = {"max_tokens": T + 1, "terminate_when": lambda context: len(context) >= T}
        else:
            kwargs = {"max_tokens": T}
        direct = direct_token_sampler(llm) if mode == "bootstrap" else None

        def once(seed: int) -> float:
            torch.manual_seed(seed)  # genlm-control draws from torch's and numpy's global generators
            np.random.seed(seed)
            self.backend.batch_size = N
            self.backend.clear_cache()
            if mode == "bootstrap":
                seqs = asyncio.run(direct.smc(n_particles=N, ess_threshold=0.5, critic=condition, **kwargs))
            else:
                sampler = AWRS(llm, condition, seed=seed)
                seqs = asyncio.run(sampler.smc(n_particles=N, ess_threshold=0.5, **kwargs))
            return float(seqs.log_ml)

        return once


PEERS = {"llamppl": LlamPPL, "genlm": GenLM}
