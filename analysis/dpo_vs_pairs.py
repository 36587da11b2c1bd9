"""Claim: DPO on pi0 pairs labelled by a Bradley-Terry model of the reward approaches pi* as the
number of pairs grows (its population optimum is pi*), IPO approaches its own fixed point
pi0 exp(w / beta) / Z (w = the win rate against pi0), not pi*; and at equal reward evaluations RLOO,
which spends them on its own samples, is far closer to pi* than DPO, which spends two per pair.

On the default model (prompt "the movie was", beta 1, 2 new tokens: 553 completions, so that the pairs
can cover the space, which DPO's population optimum needs; every fixed point exact)::

    post = exact_posterior(target, prompt)
    for n in pairs:   prefs = sample_preferences(target, prompt, n, generator)      # 2 n reward evaluations
                      q_dpo, q_ipo = train_policy(target, prompt, TrainerConfig(objective="dpo" | "ipo",
                                                  steps=epochs * n / pairs per step), preferences=prefs)
                      q_rloo = train_policy(..., TrainerConfig(objective="rloo", steps=2 n / k))  # 2 n evaluations
    figure: exact KL(q || pi*) against reward evaluations (log-log), one line per objective, the IPO fixed
            point's KL(q_ipo* || pi*) and pi0's as references; beside it each objective's exact KL to its
            own fixed point
    table:  result.json / result.csv

    python analysis/dpo_vs_pairs.py [--out analysis_out/dpo_vs_pairs] [--pairs 64 256 1024 4096 16384]

Protocol: 512 pairs per step (the SGD noise of coin-flip labels on tied rewards set a floor near 0.14
nats at 32 pairs per step and lr 1e-3, whatever the number of pairs) for 4 passes over the pairs; more
passes over few pairs overfit them (at 4 new tokens, 292,561 completions, 300 steps of 16 pairs ended
7.0 nats from pi* with 16 pairs and 0.68 with 4096, beyond pi0's 0.56: pairs that cover so large a
space are out of reach, and DPO's optimum on the pairs seen is not pi*).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import matplotlib
import torch
from tqdm.auto import tqdm

import bayes_rlhf as br
from bayes_rlhf.diagnostics.exact import policy_log_probs
from bayes_rlhf.plots import new_figure, save_figure
from bayes_rlhf.plots.style import CYCLE, PAPER_RC
from bayes_rlhf.threads import torch_threads
from bayes_rlhf.variational import TrainerConfig, train_policy
from bayes_rlhf.variational.preferences import ipo_fixed_point, sample_preferences


def kl(lq: torch.Tensor, lp: torch.Tensor) -> float:
    """Exact KL(q || p) of two tables of log-probs."""
    q = lq.exp()
    pos = q > 0
    return float((q[pos] * (lq[pos] - lp[pos])).sum())


def run_pairs(target, post, n: int, args) -> list[dict]:
    """DPO and IPO trained on one draw of n labelled pi0 pairs, and RLOO at the same reward evaluations."""
    gen = torch.Generator().manual_seed(args.seed + n)
    prefs = sample_preferences(target, post.prompt, n, generator=gen)
    ipo_fp = ipo_fixed_point(post)
    rows = []
    steps = max(1, math.ceil(args.epochs * n / (args.samples_per_prompt // 2)))  # passes over the pairs
    for name, fixed in (("dpo", post.log_probs), ("ipo", ipo_fp)):
        cfg = TrainerConfig(objective=name, steps=steps, samples_per_prompt=args.samples_per_prompt,
                            seed=args.seed, progress=False, eval_every=steps)
        t0 = time.perf_counter()
        q, _ = train_policy(target, post.prompt, cfg, preferences=prefs)
        lq = policy_log_probs(q, post)
        rows.append({"objective": name, "pairs": n, "reward_evals": 2 * n, "steps": steps,
                     "kl_q_posterior": kl(lq, post.log_probs), "kl_q_fixed_point": kl(lq, fixed),
                     "wall_s": time.perf_counter() - t0})
    k = args.rloo_samples
    steps = max(1, (2 * n) // k)  # 2 n reward evaluations when k divides 2 n
    cfg = TrainerConfig(objective="rloo", steps=steps, samples_per_prompt=k, seed=args.seed, progress=False,
                        eval_every=steps)
    t0 = time.perf_counter()
    q, history = train_policy(target, post.prompt, cfg)
    lq = policy_log_probs(q, post)
    kq = kl(lq, post.log_probs)
    rows.append({"objective": "rloo", "pairs": n, "reward_evals": history.last["reward_evals"], "steps": steps,
                 "kl_q_posterior": kq, "kl_q_fixed_point": kq, "wall_s": time.perf_counter() - t0})
    return rows


def plot(rows: list[dict], refs: dict):
    """Left: exact KL(q || pi*) against reward evaluations; right: KL to each objective's own fixed point."""
    labels = {"dpo": "DPO (pi0 pairs)", "ipo": "IPO (pi0 pairs)", "rloo": "RLOO (own samples)"}
    with matplotlib.rc_context(PAPER_RC):
        fig, axes = new_figure(ncols=2, width=4.8, height=3.7)
        for i, name in enumerate(labels):
            pts = sorted((r["reward_evals"], r["kl_q_posterior"], r["kl_q_fixed_point"]) for r in rows
                         if r["objective"] == name)
            x = [p[0] for p in pts]
            axes[0].plot(x, [p[1] for p in pts], "o-", color=CYCLE[i], label=labels[name])
            axes[1].plot(x, [p[2] for p in pts], "o-", color=CYCLE[i], label=labels[name])
        axes[0].axhline(refs["kl_prior_posterior"], color="grey", ls=":", lw=1, label="prior $\\pi_0$")
        axes[0].axhline(refs["kl_ipo_fixed_point_posterior"], color=CYCLE[1], ls="--", lw=1,
                        label="IPO's fixed point")
        axes[0].set_title("Distance to the posterior $\\pi^*$")
        axes[0].set_ylabel("exact KL(q || $\\pi^*$) [nats]")
        axes[1].set_title("Distance to each objective's own fixed point")
        axes[1].set_ylabel("exact KL(q || fixed point) [nats]")
        for ax in axes:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("reward evaluations (DPO, IPO: 2 per labelled pair)")
        axes[0].legend(fontsize=8)
    return fig


def write(rows: list[dict], out: Path) -> None:
    (out / "result.json").write_text(json.dumps(rows, indent=1))
    with open(out / "result.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="analysis_out/dpo_vs_pairs")
    ap.add_argument("--pairs", type=int, nargs="+", default=[64, 256, 1024, 4096, 16384])
    ap.add_argument("--epochs", type=float, default=4.0, help="DPO and IPO passes over their pairs (in expectation: "
                    "pairs are drawn with replacement)")
    ap.add_argument("--samples-per-prompt", type=int, default=1024, help="DPO/IPO rows per step (half as many pairs)")
    ap.add_argument("--rloo-samples", type=int, default=32, help="RLOO samples per step")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompt", default="the movie was")
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    with torch_threads(args.threads):
        return _run(args)


def _run(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = br.demo_target(args.beta, args.max_new_tokens)
    post = br.exact_posterior(target, args.prompt)
    rows = [r for n in tqdm(args.pairs, desc="pairs") for r in run_pairs(target, post, n, args)]
    refs = {"kl_prior_posterior": kl(post.prior_log_probs, post.log_probs),
            "kl_ipo_fixed_point_posterior": kl(ipo_fixed_point(post), post.log_probs),
            "num_completions": post.num_completions}
    save_figure(plot(rows, refs), out / "dpo_vs_pairs")
    write(rows, out)
    (out / "meta.json").write_text(json.dumps(refs | vars(args), indent=1, default=str))
    print(f"KL(pi0 || pi*) = {refs['kl_prior_posterior']:.4f}; KL(IPO fixed point || pi*) = "
          f"{refs['kl_ipo_fixed_point_posterior']:.4f}; {post.num_completions} completions")
    print(f"{'objective':<8}{'pairs':>7}{'evals':>8}{'steps':>7}{'KL(q||pi*)':>12}{'KL(q||fixed)':>14}{'s':>7}")
    for r in rows:
        print(f"{r['objective']:<8}{r['pairs']:>7}{r['reward_evals']:>8}{r['steps']:>7}{r['kl_q_posterior']:>12.4f}"
              f"{r['kl_q_fixed_point']:>14.4f}{r['wall_s']:>7.1f}")
    return 0 if all(math.isfinite(r["kl_q_posterior"]) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
