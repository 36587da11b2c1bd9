"""Exact enumeration against naive scoring and against the bare model, measured in one run.

    python benchmarks/exact.py [--vocab 16] [--T 6] [--device cpu|cuda] [--naive-fraction 1.0]

On a tiny GPT-2 (vocabulary V, T new tokens) it times, side by side:

1. ``exact_posterior`` (tree walk over a re-indexed KV cache, rewards, normalisation);
2. naive batched scoring: every completion of the same tree run as a whole sequence
   (``CausalLM.score`` in batches); with ``--naive-fraction f < 1`` only a fraction f of the
   table is scored and the time is scaled up by 1/f (said so in the output);
3. the bare model: the same number of one-token forward passes per depth, with a KV cache of
   the right length, and nothing else (no re-indexing, no bookkeeping) — the throughput floor.

Exact and bare are timed ``--repeats`` times, interleaved, and the best of each is used (the
machine's speed drifts between runs on a shared VM); naive is timed once.

It prints both ratios: naive / exact (target >= 50) and exact / bare (target <= 2).
``--largest-under SECONDS`` instead grows T until one enumeration takes longer than that.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import bayes_rlhf as br
from bayes_rlhf.exact import count_completions
from bayes_rlhf.models.causal_lm import _fork_cache
from bayes_rlhf.models.toy import tiny_lm

PROMPT = "w0 w1"


def length_reward() -> br.TokenReward:
    return br.TokenReward(lambda ids, mask: ((ids == 3) & mask).sum(-1).double(), name="count_w0")


def time_exact(lm, T: int, batch_size: int):
    target = br.Target(lm, length_reward(), 1.0, T)
    t0 = time.perf_counter()
    post = br.exact_posterior(target, PROMPT, batch_size=batch_size, max_completions=1 << 26)
    if lm.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, post


def time_naive(lm, post, fraction: float, batch_size: int) -> float:
    K = post.num_completions
    n = max(batch_size, int(K * fraction))
    idx = torch.randperm(K, generator=torch.Generator().manual_seed(0))[:n]
    ids, mask = post.completion_ids[idx], post.mask[idx]
    t0 = time.perf_counter()
    lp = lm.score(PROMPT, ids, mask, batch_size=batch_size).sum(-1).double().cpu()
    elapsed = time.perf_counter() - t0
    err = float((lp - post.prior_log_probs[idx]).abs().max())
    print(f"  naive scoring agrees with the tree walk: max |delta log p| = {err:.2e}")
    return elapsed * K / n


def time_bare(lm, T: int, batch_size: int) -> float:
    """One-token forwards of ``batch_size`` rows, as many per depth as the tree has prefixes."""
    V, has_eos = lm.vocab_size, lm.eos_token_id is not None
    b = V - 1 if has_eos else V
    state, _ = lm.start(PROMPT, batch_size)
    caches = []
    for d in range(T):
        caches.append(state)
        state, _ = lm.step(state, torch.full((batch_size,), 3))
    tok = torch.full((batch_size, 1), 3, device=lm.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        for d in range(1, T):
            st = caches[d - 1]
            att = torch.cat([st.attention_mask, st.attention_mask.new_ones(batch_size, 1)], 1)
            for _ in range(math.ceil(b ** d / batch_size)):
                lm.model(input_ids=tok, attention_mask=att, position_ids=st.positions.view(-1, 1),
                         past_key_values=_fork_cache(st.cache), use_cache=True)
    if lm.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=16)
    parser.add_argument("--T", type=int, default=6)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--naive-fraction", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3, choices=range(1, 21), metavar="N",
                        help="timings of exact and bare, 1..20 (the best is used)")
    parser.add_argument("--largest-under", type=float, default=None, metavar="SECONDS")
    args = parser.parse_args()
    lm = tiny_lm("gpt2", vocab_size=args.vocab, seed=0, dtype=torch.float32, device=args.device)
    print(f"tiny GPT-2: vocab {args.vocab}, 2 layers, hidden 32, float32, {args.device}, "
          f"{torch.get_num_threads()} threads")
    if args.largest_under:
        T = 2
        while True:
            leaves = count_completions(args.vocab, T, True)[0]
            elapsed, post = time_exact(lm, T, args.batch_size)
            print(f"  T={T}: {post.num_completions:,} completions in {elapsed:.1f} s")
            if elapsed > args.largest_under or leaves * args.vocab > 1 << 31:
                break
            T += 1
        return
    leaves, internal = count_completions(args.vocab, args.T, True)
    print(f"T = {args.T}: {leaves:,} completions, {internal:,} prefixes to run")
    time_exact(lm, 2, args.batch_size)  # warm-up: first calls pay one-time costs
    time_bare(lm, 2, args.batch_size)
    exact_times, bare_times = [], []
    for _ in range(args.repeats):  # interleaved, so drifts in machine speed hit both alike
        t, post = time_exact(lm, args.T, args.batch_size)
        exact_times.append(t)
        bare_times.append(time_bare(lm, args.T, args.batch_size))
    t_exact, t_bare = min(exact_times), min(bare_times)
    times = lambda ts: ", ".join(f"{t:.2f}" for t in ts)  # noqa: E731
    print(f"exact_posterior      {t_exact:8.2f} s   ({post.num_completions / t_exact:,.0f} completions/s; "
          f"best of {times(exact_times)})")
    print(f"bare model steps     {t_bare:8.2f} s   (same prefixes, one-token steps, no bookkeeping; "
          f"best of {times(bare_times)})")
    t_naive = time_naive(lm, post, args.naive_fraction, args.batch_size)
    scaled = " (scaled from a fraction)" if args.naive_fraction < 1 else ""
    print(f"naive batched score  {t_naive:8.2f} s{scaled}")
    print(f"\nratio naive / exact = {t_naive / t_exact:.1f}x   (target >= 50x)")
    print(f"ratio exact / bare  = {t_exact / t_bare:.2f}x   (target <= 2x)")


if __name__ == "__main__":
    main()
