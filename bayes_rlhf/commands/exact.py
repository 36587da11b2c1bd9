"""``bayes-rlhf exact``: the exact posterior of any (small or top-k truncated) model."""

from __future__ import annotations

import argparse

EPILOG = """example:
  bayes-rlhf exact --model path/to/model --prompt "the movie was" --reward sentiment \\
      --beta 1.0 --max-new-tokens 4 --out runs/exact
  bayes-rlhf exact --model gpt2 --top-k 8 --prompt "Hello" --reward contains:! --max-new-tokens 4
  bayes-rlhf exact --reward length --out runs/exact_length   # the embedded model, its demo prompts
"""


def register(sub) -> None:
    from bayes_rlhf.commands._common import add_model_args, add_out_args, add_target_args

    p = sub.add_parser("exact", help="enumerate a model's completions and print the exact posterior",
                       description="Enumerate every completion of each prompt, compute the exact posterior "
                                   "pi* = pi0 exp(r / beta) / Z, print a summary and optionally write it.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    add_target_args(p)
    p.add_argument("--max-completions", type=int, default=None, help="refuse larger spaces (default 4M)")
    add_out_args(p, None, "write a run directory here (summary.json, posterior tables, inference_data.nc, "
                          "top_completions.csv; `bayes-rlhf report DIR` draws its figures)")
    p.set_defaults(func=run)


def run(args) -> int:
    from bayes_rlhf.commands._common import (claim, format_posterior, load_target, model_path, prompts_of,
                                             target_settings, write_top_completions)
    from bayes_rlhf.exact.enumerate import DEFAULT_MAX_COMPLETIONS, check_space
    from bayes_rlhf.exact.solve import exact_posterior
    from bayes_rlhf.report import save_run

    prompts = prompts_of(args)
    folder = claim(args, "exact", target_settings(args))
    target = load_target(args)
    max_completions = args.max_completions or DEFAULT_MAX_COMPLETIONS
    check_space(target.prior, target.max_new_tokens, max_completions)
    posteriors = []
    for prompt in prompts:
        post = exact_posterior(target, prompt, max_completions=max_completions, progress=True)
        print(format_posterior(post), end="\n\n")
        posteriors.append(post)
    if folder is not None:
        with folder.writing() as d:
            save_run(d, posteriors, extra={"command": "exact", "model": str(model_path(args.model)),
                                           "reward": args.reward, "top_k": args.top_k})
            write_top_completions(d / "top_completions.csv", posteriors)
        print(f"wrote {args.out}/ (a run directory: `bayes-rlhf report {args.out}` draws its figures)")
    return 0
