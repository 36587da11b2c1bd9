"""``bayes-rlhf exact``: the exact posterior of any (small or top-k truncated) model."""

from __future__ import annotations

import argparse

EPILOG = """example:
  bayes-rlhf exact --model path/to/model --prompt "the movie was" --reward sentiment \\
      --beta 1.0 --max-new-tokens 4 --out runs/exact
  bayes-rlhf exact --model gpt2 --top-k 8 --prompt "Hello" --reward contains:! --max-new-tokens 4
  bayes-rlhf exact --reward length --out runs/exact_length   # the embedded model, its demo prompts
  bayes-rlhf exact --reward sentiment --kl-budget 0.5         # beta chosen so that KL(pi* || pi0) = 0.5
  bayes-rlhf exact --moment regex:great=0.3 --moment length=3   # I-projection: 30% 'great', mean length 3
"""


def register(sub) -> None:
    from bayes_rlhf.commands._common import (HelpFormatter, add_control_args, add_model_args, add_out_args,
                                             add_target_args, at_least_one)

    p = sub.add_parser("exact", help="enumerate a model's completions and print the exact posterior",
                       description="Enumerate every completion of each prompt, compute the exact posterior "
                                   "pi* = pi0 exp(r / beta) / Z, print a summary and optionally write it.",
                       epilog=EPILOG, formatter_class=HelpFormatter)
    add_model_args(p)
    add_target_args(p)
    add_control_args(p)
    p.add_argument("--max-completions", type=at_least_one, default=None, metavar="N",
                   help="refuse spaces with more completions (default: refuse a table that would not fit in "
                        "available memory)")
    add_out_args(p, None, "write a run directory here (summary.json, posterior tables, inference_data.nc, "
                          "top_completions.csv; `bayes-rlhf report DIR` draws its figures)")
    p.set_defaults(func=run)


def _check_control(args, moments) -> dict:
    """--kl-budget / --moment checked before any work; the settings they add to --out's marker."""
    from bayes_rlhf._checks import check_real
    from bayes_rlhf.demo import DEFAULT_BETA, DEFAULT_REWARD
    from bayes_rlhf.errors import ConfigError

    if moments and args.kl_budget is not None:
        raise ConfigError("--moment and --kl-budget exclude each other: a moment target has beta = 1 and its "
                          "lambda fixed by the moments; give one of them")
    if moments and (args.beta != DEFAULT_BETA or args.reward != DEFAULT_REWARD):
        raise ConfigError("--moment builds the reward lambda . phi (beta = 1) from its features: drop --reward "
                          "and --beta")
    if args.kl_budget is not None:
        check_real(args.kl_budget, "--kl-budget", low=0.0, low_open=True)
        return {"kl_budget": args.kl_budget}
    return {"moments": list(args.moment)} if moments else {}


def _controlled_target(args, moments, prompts, max_completions):
    """The target of --moment (a moment target), --kl-budget (beta chosen) or neither, and for
    --kl-budget its posteriors (each prompt enumerated once, the tables re-tilted to the chosen beta)."""
    import dataclasses

    from bayes_rlhf.commands._common import load_prior, load_target
    from bayes_rlhf.control import beta_for_kl, moment_target
    from bayes_rlhf.diagnostics.frontier import retilt
    from bayes_rlhf.exact.enumerate import check_space
    from bayes_rlhf.exact.from_target import exact_posterior
    from bayes_rlhf.rewards.spec import parse_reward

    if moments:
        lm = load_prior(args)
        for p in prompts:  # the context, before the size of the space (cheap, and the likelier mistake)
            lm.check_prompt(p, args.max_new_tokens)
        check_space(lm, args.max_new_tokens, max_completions)
        features = [parse_reward(spec, lm) for spec, _ in moments]
        return moment_target(lm, prompts, features, [v for _, v in moments], args.max_new_tokens, method="exact",
                             max_completions=max_completions, progress=True), None
    target = load_target(args)
    for p in prompts:
        target.check_prompt(p)
    check_space(target.prior, target.max_new_tokens, max_completions)
    if args.kl_budget is None:
        return target, None
    tables = [exact_posterior(target, p, max_completions=max_completions, progress=True) for p in prompts]
    beta = beta_for_kl(target, prompts, args.kl_budget, method="exact", posteriors=tables)
    return dataclasses.replace(target, beta=beta), [retilt(post, beta) for post in tables]


def format_control(target) -> str:
    """What --moment or --kl-budget chose: lambda and the moments, or beta and its KL."""
    from bayes_rlhf.control import control_summary

    c = control_summary(target)
    if c is None:
        return ""
    if c["kind"] == "budget":
        return (f"beta = {c['beta']:.6g} chosen for KL(pi* || pi0) = {c['value']:g} averaged over "
                f"{c['num_prompts']} prompt(s) (achieved {c['kl_to_prior']:.8f}; reachable "
                f"({c['reachable'][0]:.4g}, {c['reachable'][1]:.4g}))")
    lines = [f"moment target pi0 exp(lambda . phi) / Z (beta = 1), KL(pi* || pi0) = {c['kl_to_prior']:.4f} "
             f"averaged over {c['num_prompts']} prompt(s):"]
    for f, lam, m, a in zip(c["features"], c["coefficients"], c["moments"], c["achieved"]):
        lines.append(f"  {f}: lambda = {lam:+.6g}, target mean {m:g}, achieved {a:.8f}")
    return "\n".join(lines)


def run(args) -> int:
    """``_run`` on ``--threads`` torch threads (default: one for the embedded model)."""
    from bayes_rlhf.commands._common import command_threads

    with command_threads(getattr(args, "threads", None), args.model):
        return _run(args)


def _run(args) -> int:
    from bayes_rlhf.commands._common import (claim, format_posterior, model_path, parse_moments, prompts_of,
                                             target_settings, write_top_completions)
    from bayes_rlhf.control import control_summary
    from bayes_rlhf.exact.enumerate import DEFAULT_MAX_COMPLETIONS
    from bayes_rlhf.exact.from_target import exact_posterior
    from bayes_rlhf.diagnostics.run_dir import save_run

    prompts = prompts_of(args)
    moments = parse_moments(args.moment)
    settings = {**target_settings(args), **_check_control(args, moments)}
    folder = claim(args, "exact", settings)
    max_completions = args.max_completions or DEFAULT_MAX_COMPLETIONS
    target, held = _controlled_target(args, moments, prompts, max_completions)
    control = format_control(target)
    if control:
        print(control, end="\n\n")
    posteriors = []
    for i, prompt in enumerate(prompts):
        post = held[i] if held else exact_posterior(target, prompt, max_completions=max_completions, progress=True)
        print(format_posterior(post), end="\n\n")
        posteriors.append(post)
    if folder is not None:
        with folder.writing() as d:
            save_run(d, posteriors, extra={"command": "exact", "model": str(model_path(args.model)),
                                           "reward": args.reward if not moments else None, "top_k": args.top_k,
                                           "control": control_summary(target)})
            write_top_completions(d / "top_completions.csv", posteriors)
        print(f"wrote {args.out}/ (a run directory: `bayes-rlhf report {args.out}` draws its figures)")
    return 0
