"""``bayes-rlhf demo``: the exact posterior of the embedded default model for its demo prompts."""

from __future__ import annotations

import argparse

EPILOG = """example:
  bayes-rlhf demo --out demo_out        # prints the summary, writes demo_out/ (policy/ included)
Running the same command again replaces its own earlier output; a folder holding another
command's run, or a demo with other settings, is refused unless --overwrite.
"""


def register(sub) -> None:
    from bayes_rlhf.commands._common import HelpFormatter, add_beta_args, add_out_args

    p = sub.add_parser("demo", help="exact posterior, samplers and a short RLOO policy on the embedded model (the main job)",
                       description="Load the embedded default model and its sentiment reward, enumerate the "
                                   "exact posterior of each demo prompt, run SMC and importance sampling, "
                                   "train a short RLOO policy, compare everything with the exact posterior, "
                                   "print a summary and write it, with figures and a report, to --out.",
                       epilog=EPILOG, formatter_class=HelpFormatter)

    add_out_args(p, "demo_out", "output folder (written in full, then swapped in)")
    add_beta_args(p)
    p.add_argument("--particles", type=int, default=256, metavar="N", help="SMC particles and importance samples per prompt (default 256)")
    p.add_argument("--train-steps", type=int, default=60, metavar="STEPS",
                   help="RLOO steps of the policy compared with the posterior (default 60; 0: no training)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling and the training (default 0)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="torch threads (default 1: the embedded model is tiny, so more threads do not help, and "
                        "they stall when other work shares the CPU)")
    p.set_defaults(func=run)


def run(args) -> int:
    """The demo on ``--threads`` torch threads, without transformers' progress bars: loading and saving
    the 28 tensors of the embedded model is instant, and its bars interleaved with the demo's own output."""
    from bayes_rlhf.commands._common import hf_progress_bars_off
    from bayes_rlhf.threads import torch_threads

    with hf_progress_bars_off(), torch_threads(getattr(args, "threads", 1)):
        return _run(args)


def _run(args) -> int:
    import time
    from pathlib import Path

    from bayes_rlhf._checks import check_int
    from bayes_rlhf.commands._common import claim, format_posterior, write_top_completions
    from bayes_rlhf.demo import DEFAULT_MODEL, DEFAULT_PROMPTS, DEFAULT_REWARD, demo_target
    from bayes_rlhf.diagnostics.run_dir import save_run
    from bayes_rlhf.exact.enumerate import check_space
    from bayes_rlhf.exact.from_target import exact_posterior
    from bayes_rlhf.report import write_report

    check_int(args.particles, "--particles", 1)
    check_int(args.train_steps, "--train-steps", 0)
    check_int(args.seed, "--seed", 0)  # TrainerConfig's rule, before the enumeration and SMC that precede it
    folder = claim(args, "demo", {"beta": args.beta, "max_new_tokens": args.max_new_tokens,
                                  "particles": args.particles, "train_steps": args.train_steps, "seed": args.seed})
    target = demo_target(args.beta, args.max_new_tokens, device="cpu")
    for prompt in DEFAULT_PROMPTS:  # the context and the size of the space, before the first enumeration
        target.check_prompt(prompt)
    check_space(target.prior, target.max_new_tokens)
    print(f"bayes-rlhf demo: embedded word-level GPT-2 (vocab {target.prior.vocab_size}), reward = {DEFAULT_REWARD}, "
          f"beta = {target.beta:g}, T = {target.max_new_tokens}\n")
    posteriors = []
    for prompt in DEFAULT_PROMPTS:
        t0 = time.perf_counter()
        post = exact_posterior(target, prompt)
        print(format_posterior(post))
        print(f"  (enumerated in {time.perf_counter() - t0:.2f} s)\n")
        posteriors.append(post)
    samples, policy, policies, histories = _sample_and_train(target, posteriors, args)
    study = _log_z_study(target, posteriors[0], args.seed)
    t0 = time.perf_counter()
    print(f"\nwriting {args.out}/: the run, then the report's figures and report.html ...", flush=True)
    with folder.writing() as d:
        save_run(d, posteriors, policies=policies, histories=histories, samples=samples,
                 extra={"command": "demo", "model": DEFAULT_MODEL, "reward": DEFAULT_REWARD, "seed": args.seed,
                        "log_z_vs_particles": study})
        write_top_completions(d / "top_completions.csv", posteriors)
        if policy is not None:
            policy.save_pretrained(d / "policy")
    report = write_report(args.out, progress=True)
    saved = "policy/ (the RLOO policy, a transformers checkpoint), " if policy is not None else ""
    print(f"wrote {args.out}/: summary.json, posterior tables, inference_data.nc (ArviZ), {saved}figures/, "
          f"{Path(report).name} ({time.perf_counter() - t0:.1f} s)")
    return 0


def _sample_and_train(target, posteriors, args):
    """SMC and importance sampling of every prompt, and a short RLOO policy, each against pi*.

    Returns the samples, the policy (None without training), its exact log q tables and history.
    """
    import torch

    from bayes_rlhf.commands._common import show_prompt
    from bayes_rlhf.diagnostics.exact import compare, policy_log_probs
    from bayes_rlhf.samplers import importance_sample, smc
    from bayes_rlhf.variational import TrainerConfig, train_policy

    prompts = [p.prompt for p in posteriors]
    g = torch.Generator().manual_seed(args.seed)
    samples = {"smc": smc(target, prompts, args.particles, generator=g),
               "importance": importance_sample(target, prompts, args.particles, generator=g)}
    print(f"sampling with {args.particles} particles per prompt: log Z estimate (exact)")
    for i, post in enumerate(posteriors):
        est = "   ".join(f"{name} {float(ws.log_z[i]):+.4f}" for name, ws in samples.items())
        print(f"  {show_prompt(post.prompt):18s} {est}   ({post.log_z:+.4f})")
    if args.train_steps <= 0:
        return samples, None, None, None
    config = TrainerConfig(steps=args.train_steps, seed=args.seed)
    policy, history = train_policy(target, prompts, config, evaluator=posteriors)
    log_q = [policy_log_probs(policy, post) for post in posteriors]  # exact log q on each table, once
    print(f"\nRLOO policy after {args.train_steps} steps: exact KL(q || pi*) per prompt (prior's in brackets)")
    for post, lq in zip(posteriors, log_q):
        print(f"  {show_prompt(post.prompt):18s} {compare(lq, post).kl_q_posterior:.4f}   "
              f"({compare(post.prior_log_probs, post).kl_q_posterior:.4f})")
    return samples, policy, {"rloo": log_q}, {"rloo": history}


def _log_z_study(target, post, seed: int, sizes=(8, 32, 128, 512), repeats: int = 8) -> dict:
    """log Z estimates of SMC and importance sampling over particle counts and seeds, for one prompt."""
    import torch

    from bayes_rlhf.samplers import importance_sample, smc

    g = torch.Generator().manual_seed(seed + 1)
    estimates = {"SMC (bootstrap)": [], "importance (prior)": []}
    for n in sizes:
        estimates["SMC (bootstrap)"].append(
            [float(smc(target, post.prompt, n, generator=g).log_z[0]) for _ in range(repeats)])
        estimates["importance (prior)"].append(
            [float(importance_sample(target, post.prompt, n, generator=g).log_z[0]) for _ in range(repeats)])
    return {"prompt": post.prompt, "exact_log_z": post.log_z, "num_particles": list(sizes), "estimates": estimates}
