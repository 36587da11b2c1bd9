"""``bayes-rlhf demo``: the exact posterior of the embedded default model for its demo prompts."""

from __future__ import annotations

import argparse

EPILOG = """example:
  bayes-rlhf demo --out demo_out        # prints the summary, writes demo_out/
"""


def register(sub) -> None:
    p = sub.add_parser("demo", help="exact posterior of the embedded default model (the main job)",
                       description="Load the embedded default model and its sentiment reward, enumerate the "
                                   "exact posterior of each demo prompt, print a summary and write it, with "
                                   "figures and a report, to --out.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_out", help="output folder (replaced atomically)")
    p.add_argument("--beta", type=float, default=None, help="KL coefficient (default 1.0)")
    p.set_defaults(func=run)


def run(args) -> int:
    import time
    from pathlib import Path

    from bayes_rlhf.commands._common import format_posterior, write_top_completions
    from bayes_rlhf.exact.solve import exact_posterior
    from bayes_rlhf.report import save_run, write_report
    from bayes_rlhf.models.default_model import (DEFAULT_BETA, DEFAULT_MAX_NEW_TOKENS, DEFAULT_PROMPTS,
                                                 default_model)
    from bayes_rlhf.target import Target

    lm, reward = default_model(device="cpu")
    beta = DEFAULT_BETA if args.beta is None else args.beta
    target = Target(lm, reward, beta, DEFAULT_MAX_NEW_TOKENS)
    print(f"bayes-rlhf demo: embedded word-level GPT-2 (vocab {lm.vocab_size}), reward = sentiment, "
          f"beta = {beta:g}, T = {DEFAULT_MAX_NEW_TOKENS}\n")
    posteriors = []
    for prompt in DEFAULT_PROMPTS:
        t0 = time.perf_counter()
        post = exact_posterior(target, prompt)
        print(format_posterior(post))
        print(f"  (enumerated in {time.perf_counter() - t0:.2f} s)\n")
        posteriors.append(post)
    t0 = time.perf_counter()
    save_run(args.out, posteriors, extra={"model": "default", "reward": "sentiment"})
    write_top_completions(Path(args.out) / "top_completions.csv", posteriors)
    report = write_report(args.out)
    print(f"wrote {args.out}/: summary.json, posterior tables, inference_data.nc (ArviZ), figures/, "
          f"{Path(report).name} ({time.perf_counter() - t0:.1f} s)")
    return 0
