"""``bayes-rlhf exact``: the exact posterior of any (small or top-k truncated) model."""

from __future__ import annotations

import argparse

EPILOG = """example:
  bayes-rlhf exact --model path/to/model --prompt "the movie was" --reward sentiment \\
      --beta 1.0 --max-new-tokens 4 --out runs/exact
  bayes-rlhf exact --model gpt2 --top-k 8 --prompt "Hello" --reward contains:! --max-new-tokens 4
"""


def register(sub) -> None:
    from bayes_rlhf.rewards.spec import SPEC_HELP

    p = sub.add_parser("exact", help="enumerate a model's completions and print the exact posterior",
                       description="Enumerate every completion of each prompt, compute the exact posterior "
                                   "pi* = pi0 exp(r / beta) / Z, print a summary and optionally write it.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", help="model directory or hub id ('default': the embedded model)")
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    p.add_argument("--reward", default="sentiment", help=SPEC_HELP)
    p.add_argument("--beta", type=float, default=1.0, help="KL coefficient, > 0")
    p.add_argument("--max-new-tokens", type=int, default=4, help="T: completions end at EOS or after T tokens")
    p.add_argument("--top-k", type=int, default=None, help="truncate the prior to its top k tokens per step")
    p.add_argument("--dtype", default=None, choices=["float32", "float64", "bfloat16", "float16"])
    p.add_argument("--max-completions", type=int, default=None, help="refuse larger spaces (default 4M)")
    p.add_argument("--out", default=None, help="write a run directory here (summary.json, posterior tables, "
                                               "inference_data.nc, top_completions.csv)")
    p.set_defaults(func=run)


def run(args) -> int:
    from bayes_rlhf.commands._common import format_posterior, write_top_completions
    from bayes_rlhf.exact.enumerate import DEFAULT_MAX_COMPLETIONS, check_space
    from bayes_rlhf.exact.solve import exact_posterior
    from pathlib import Path

    from bayes_rlhf.report import save_run
    from bayes_rlhf.models.causal_lm import load_model
    from bayes_rlhf.models.default_model import DEFAULT_DIR
    from bayes_rlhf.rewards.spec import parse_reward
    from bayes_rlhf.target import Target

    path = DEFAULT_DIR if args.model == "default" else args.model
    lm = load_model(path, dtype=args.dtype, top_k=args.top_k)
    target = Target(lm, parse_reward(args.reward, lm), args.beta, args.max_new_tokens)
    max_completions = args.max_completions or DEFAULT_MAX_COMPLETIONS
    check_space(lm, target.max_new_tokens, max_completions)
    for prompt in args.prompt:
        lm.encode_prompt(prompt)
    posteriors = []
    for prompt in args.prompt:
        post = exact_posterior(target, prompt, max_completions=max_completions, progress=True)
        print(format_posterior(post), end="\n\n")
        posteriors.append(post)
    if args.out:
        save_run(args.out, posteriors, extra={"model": str(path), "reward": args.reward, "top_k": args.top_k})
        write_top_completions(Path(args.out) / "top_completions.csv", posteriors)
        print(f"wrote {args.out}/ (a run directory: `bayes-rlhf report {args.out}` draws its figures)")
    return 0
