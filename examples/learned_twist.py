"""User story: "Learn an SMC twist from samples alone, then sample with it, on a model I cannot enumerate."

Fit a ``LearnedTwist`` by contrastive twist learning from importance samples of the prior (no
enumeration enters the fit), then compare the log Z estimates of bootstrap SMC and of twisted
SMC with the learned twist over repeated runs at the same number of particles, and bootstrap
with 16x the particles (about the twisted run's time here: on this tiny LM, evaluating the twist
on every candidate token costs more than the LM step; the GRU's cost stays fixed as the LM grows).
The default model is small enough to enumerate, so the exact log Z is printed as the yardstick;
on a large model drop that line.

    python examples/learned_twist.py [--steps 100] [--particles 16] [--runs 64]
"""

import argparse
import math
import time

import torch

import bayes_rlhf as br
from bayes_rlhf.samplers import LearnedTwist, fit_twist_ctl
from bayes_rlhf.threads import torch_threads


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default="the movie was")
    parser.add_argument("--steps", type=int, default=100, help="CTL optimiser steps")
    parser.add_argument("--samples", type=int, default=128, help="importance samples per CTL step")
    parser.add_argument("--particles", type=int, default=16, help="SMC particles per run")
    parser.add_argument("--runs", type=int, default=64, help="independent SMC runs per method")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (tiny models: 1 is fastest)")
    args = parser.parse_args(argv)
    with torch_threads(args.threads):
        return run(args)


def run(args):

    lm, reward = br.default_model()
    target = br.Target(prior=lm, reward=reward, beta=1.0, max_new_tokens=4)
    g = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)  # example script: initialises the twist's weights reproducibly
    twist = LearnedTwist(lm.vocab_size, hidden=32).double()
    t0 = time.perf_counter()
    history = fit_twist_ctl(twist, target, args.prompt, steps=args.steps, num_samples=args.samples,
                            positive="is", negative="prior", lr=2e-2, generator=g)
    fit_seconds = time.perf_counter() - t0
    k = max(1, len(history) // 10)
    loss = [sum(h["loss"] for h in history[i:i + k]) / len(history[i:i + k]) for i in (0, len(history) - k)]
    print(f"CTL: {args.steps} steps x {args.samples} IS samples in {fit_seconds:.1f} s; "
          f"loss (KL up to a constant) {loss[0]:.3f} -> {loss[1]:.3f}")

    log_z = br.exact_posterior(target, args.prompt).log_z  # the yardstick only; drop on a large model
    prompts = [args.prompt] * args.runs  # R independent runs in one batch
    rows = {}
    methods = [("bootstrap SMC", args.particles, {}),
               ("twisted SMC, learned twist", args.particles, {"proposal": "twisted", "twist": twist}),
               (f"bootstrap SMC, {16 * args.particles} particles", 16 * args.particles, {})]
    for name, n, kw in methods:
        t0 = time.perf_counter()
        est = br.smc(target, prompts, n, generator=g, **kw).log_z
        err = est - log_z
        rows[name] = {"mean_error": float(err.mean()), "sd": float(est.std()), "rmse": float(err.pow(2).mean().sqrt()),
                      "variance": float(est.var()), "seconds": time.perf_counter() - t0}
    print(f"exact log Z = {log_z:.4f}; {args.runs} runs of N = {args.particles} particles each (unless named)")
    print(f"{'method':32s} {'mean error':>10s} {'sd':>8s} {'RMSE':>8s} {'seconds':>8s}")
    for name, r in rows.items():
        print(f"{name:32s} {r['mean_error']:+10.4f} {r['sd']:8.4f} {r['rmse']:8.4f} {r['seconds']:8.2f}")
    ratio = rows["bootstrap SMC"]["variance"] / rows["twisted SMC, learned twist"]["variance"]
    print(f"log Z variance ratio (bootstrap / learned twist): {ratio:.1f}")
    assert all(math.isfinite(r["rmse"]) for r in rows.values())
    return {"history": history, "twist": twist, "log_z": log_z, "rows": rows, "variance_ratio": ratio}


if __name__ == "__main__":
    main()
