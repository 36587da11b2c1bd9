"""Claim: the adaptive KL controller (Ziegler et al. 2019) drives beta to the beta whose posterior
spends the KL budget, the one ``beta_for_kl`` computes exactly, and the policy follows pi*_beta_t.

On the default model ("the movie was", T = 3, sentiment reward), RLOO runs with
``kl_target`` = 0.5 from a beta above and a beta below ``beta_for_kl(kl=0.5)``; every
``eval_every`` steps the policy's exact KL(q || pi0) and KL(q || pi*_beta_t) are measured on the
enumerated table (re-tilted to beta_t, no re-enumeration). The controller is stationary where
KL(q || pi0) = kl_target for the current q, so beta_t settles around beta_for_kl's answer, up to
the noise of the 32-sample KL estimate and q's lag behind pi*_beta_t.

    python analysis/adaptive_kl.py [--out analysis/out/adaptive_kl] [--steps 600] [--starts 2.0 0.5]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import bayes_rlhf as br
from bayes_rlhf.diagnostics.frontier import retilt
from bayes_rlhf.plots import PAPER_RC, save_figure
from bayes_rlhf.variational import TrainerConfig

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def run(target, prompt: str, beta0: float, args, post, seed: int) -> dict:
    """One controlled RLOO run from ``beta0``: beta and the batch KL per step, exact KLs when evaluated."""
    cfg = TrainerConfig(steps=args.steps, samples_per_prompt=args.samples_per_prompt, progress=False,
                        eval_every=args.eval_every, kl_target=args.kl_target, kl_horizon=args.horizon, seed=seed)
    start = dataclasses.replace(target, beta=beta0)
    _, hist = br.train_policy(start, prompt, cfg, evaluator=retilt(post, beta0))
    evals = [{"step": r["step"], "beta": r["beta"], "kl_prior_exact": r["kl_prior_exact"],
              "kl_q_posterior": r["kl_q_posterior"]} for r in hist.evaluated()]
    return {"beta0": beta0, "seed": seed, "beta": hist.column("beta"), "kl_prior_batch": hist.column("kl_prior"),
            "evaluations": evals}


def draw(runs: list[dict], beta_star: float, kl_target: float, title: str) -> Figure:
    with matplotlib.rc_context(PAPER_RC):
        fig = Figure(figsize=(13.0, 4.0), layout="constrained")
        FigureCanvasAgg(fig)
        a, b, c = fig.subplots(1, 3)
        for colour, r in zip(COLOURS, runs):
            steps = list(range(1, len(r["beta"]) + 1))
            label = f"from $\\beta_1$ = {r['beta0']:g}"
            a.plot(steps, r["beta"], color=colour, lw=1.2, label=label)
            ev = r["evaluations"]
            b.plot(steps, r["kl_prior_batch"], color=colour, lw=0.5, alpha=0.25)
            b.plot([e["step"] for e in ev], [e["kl_prior_exact"] for e in ev], "o-", ms=3, color=colour,
                   label=f"{label}: exact")
            c.semilogy([e["step"] for e in ev], [e["kl_q_posterior"] for e in ev], "o-", ms=3, color=colour,
                       label=label)
        a.axhline(beta_star, color="k", ls="--", lw=1, label=f"beta_for_kl({kl_target:g}) = {beta_star:.4f}")
        a.set(xlabel="step", ylabel="$\\beta_t$", title="The controller's $\\beta_t$")
        b.axhline(kl_target, color="k", ls="--", lw=1, label=f"kl_target = {kl_target:g}")
        b.set(xlabel="step", ylabel="KL(q || $\\pi_0$) [nats]",
              title="KL(q || $\\pi_0$): exact (dots), batch estimate (faint)")
        c.set(xlabel="step", ylabel="KL(q || $\\pi^*_{\\beta_t}$) [nats]",
              title="Exact KL to the posterior at the current $\\beta_t$")
        for ax in (a, b, c):
            ax.legend(fontsize=8)
        fig.suptitle(title)
    return fig


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="analysis/out/adaptive_kl")
    ap.add_argument("--prompt", default="the movie was")
    ap.add_argument("--max-new-tokens", type=int, default=3)
    ap.add_argument("--kl-target", type=float, default=0.5)
    ap.add_argument("--horizon", type=float, default=1600.0, help="kl_horizon, in samples")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--samples-per-prompt", type=int, default=32)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--starts", type=float, nargs="+", default=[2.0, 0.5], help="initial betas")
    ap.add_argument("--seed", type=int, default=0, help="seed of the first run (the next start gets seed + 1, ...)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    target = br.demo_target(1.0, args.max_new_tokens)
    post = br.exact_posterior(target, args.prompt)
    beta_star = br.beta_for_kl(target, args.prompt, kl=args.kl_target, posteriors=post)
    # one seed per start: with a shared seed, two policies that have converged draw the same samples
    runs = [run(target, args.prompt, b0, args, post, args.seed + i) for i, b0 in enumerate(args.starts)]
    fig = draw(runs, float(beta_star), args.kl_target,
               f"Adaptive KL control (RLOO, kl_horizon = {args.horizon:g}, {args.samples_per_prompt} samples a step) "
               f"on {args.prompt!r}, exact over {post.num_completions:,} completions")
    save_figure(fig, out / "adaptive_kl")
    tail = max(1, args.steps // 3)
    for r in runs:
        last = [e for e in r["evaluations"] if e["step"] > args.steps - tail] or r["evaluations"][-1:]
        r["summary"] = {"final_beta": r["beta"][-1], "mean_beta_last": statistics.mean(r["beta"][-tail:]),
                        "mean_kl_prior_exact_last": statistics.mean(e["kl_prior_exact"] for e in last),
                        "final_kl_q_posterior": r["evaluations"][-1]["kl_q_posterior"]}
    result = {"beta_for_kl": float(beta_star), "kl_target": args.kl_target, "num_completions": post.num_completions,
              "settings": vars(args), "runs": runs}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(f"beta_for_kl(kl={args.kl_target:g}) = {float(beta_star):.5f}")
    for r in runs:
        s = r["summary"]
        print(f"from beta {r['beta0']:g}: final beta {s['final_beta']:.4f} ({s['final_beta'] / beta_star - 1:+.2%}), "
              f"mean of the last {tail} steps {s['mean_beta_last']:.4f} ({s['mean_beta_last'] / beta_star - 1:+.2%}); "
              f"exact KL(q || pi0) there {s['mean_kl_prior_exact_last']:.4f}; final KL(q || pi*_beta) "
              f"{s['final_kl_q_posterior']:.5f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
