"""Claim: at equal reward evaluations, the objectives whose expected gradient is grad KL(q || pi*)
(RLOO with k1 in the reward, trajectory balance) settle far closer to pi* than GRPO, Dr. GRPO and
k3-in-loss RLOO, whose fixed points are not pi*; PPO and DPG (unbiased, noisier here) lie between.
The preference objectives join them: DPO and IPO on steps * samples / 2 pairs of pi0 samples
labelled by a Bradley-Terry model of the reward (``sample_preferences``: the same reward
evaluations, spent up front; their curves are drawn at the evaluations the other runs have spent by
the same step), online DPO with the Bradley-Terry judge (fixed point pi*) and with TRL's "better"
judge (fixed point pi0 on the best completions); f-DPG, BOND and vBoN when registered.

On the default model (prompt "the movie was", beta 1, 4 new tokens; pi* enumerated exactly) every
objective trains a policy from the prior with the same seed, samples per step and number of steps,
so the same number of reward evaluations; the exact KL(q || pi*) and KL(pi* || q) are logged every
``--eval-every`` steps::

    post = exact_posterior(Target(pi0, r, beta, T), prompt)
    for each objective o:  q_o, history = train_policy(target, prompt, TrainerConfig(objective=o, ...),
                                                       evaluator=post[, preferences=pairs of pi0])
    figures: KL(q || pi*) and KL(pi* || q) against reward evaluations (log y), one line per objective;
             each final (KL(q || pi0), E_q[r]) on the exact reward-KL frontier of pi*_beta'
    table:   final exact KLs (and their mean over the last quarter of evaluations, which averages
             out step-to-step noise), J(q) and its gap to beta log Z (= beta KL(q || pi*))

    python analysis/objectives_vs_posterior.py [--out analysis_out/objectives] [--steps 400]
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
from bayes_rlhf.diagnostics.frontier import FrontierPoint, beta_grid, policy_point, posterior_frontier
from bayes_rlhf.plots import new_figure, plot_frontier, save_figure
from bayes_rlhf.plots.style import CYCLE, PAPER_RC
from bayes_rlhf.threads import torch_threads
from bayes_rlhf.variational import TrainerConfig, train_policy
from bayes_rlhf.variational.preferences import sample_preferences

#: label -> TrainerConfig fields that pick the objective (everything else is shared).
RUNS = {
    "rloo": {"objective": "rloo"},
    "ppo": {"objective": "ppo"},
    "dpg (policy)": {"objective": "dpg", "dpg_proposal": "policy"},
    "vargrad (TB)": {"objective": "vargrad"},
    "grpo": {"objective": "grpo"},
    "dr. grpo": {"objective": "grpo", "grpo_scale_rewards": False},
    "rloo k3_loss": {"objective": "rloo", "kl_estimator": "k3_loss"},
    "dpo (pi0 pairs)": {"objective": "dpo"},
    "ipo (pi0 pairs)": {"objective": "ipo"},
    "online dpo": {"objective": "online_dpo"},
    "online dpo (better)": {"objective": "online_dpo", "dpo_judge": "better"},
    "fdpg (js)": {"objective": "fdpg", "f_divergence": "js"},
    "bond (n=4)": {"objective": "bond", "bon_n": 4},
    "vbon (n=4)": {"objective": "vbon", "bon_n": 4},
}


def train_all(target, post, runs: dict, steps: int, samples: int, eval_every: int, seed: int,
              lr: float | None = None) -> dict:
    """Train one policy per run; returns label -> (policy, history, wall seconds)."""
    out = {}
    for label, kw in tqdm(runs.items(), desc="objectives"):
        cfg = TrainerConfig(steps=steps, samples_per_prompt=samples, eval_every=eval_every, seed=seed,
                            lr=lr, progress=False, **kw)
        pairs = None
        if cfg.bound_objective().source.kind == "preferences":  # as many reward evaluations, 2 per pair
            pairs = sample_preferences(target, post.prompt, max(1, steps * samples // 2),
                                       generator=torch.Generator().manual_seed(seed))
        t0 = time.perf_counter()
        policy, history = train_policy(target, post.prompt, cfg, evaluator=post, preferences=pairs)
        if pairs is not None:  # count the 2 * pairs labels, spread over the steps (the loop also scores
            for row in history.rows:  # the pair rows' rewards, which DPO and IPO never read)
                row["reward_evals"] = row["step"] * samples
        out[label] = (policy, history, time.perf_counter() - t0)
    return out


def summarise(label: str, policy, history, wall: float, post) -> dict:
    """Final exact numbers of one trained policy (and tail means of the logged exact KLs)."""
    c = br.compare(policy, post)
    rows = history.evaluated()
    tail = rows[-max(1, len(rows) // 4):]
    return {"objective": label, "reward_evals": history.last["reward_evals"], "wall_s": wall,
            "kl_q_posterior": c.kl_q_posterior, "kl_posterior_q": c.kl_posterior_q,
            "kl_q_posterior_tail": sum(r["kl_q_posterior"] for r in tail) / len(tail),
            "kl_posterior_q_tail": sum(r["kl_posterior_q"] for r in tail) / len(tail),
            "total_variation": c.total_variation, "kl_q_prior": c.kl_q_prior, "mean_reward": c.mean_reward,
            "J": c.objective, "gap_to_beta_log_z": c.optimal_objective - c.objective}


def plot_curves(results: dict, post):
    """Two panels: KL(q || pi*) and KL(pi* || q) against reward evaluations, log y."""
    with matplotlib.rc_context(PAPER_RC):
        fig, axes = new_figure(ncols=2, width=4.6, height=3.6)
        for i, (label, (_, history, _)) in enumerate(results.items()):
            rows = history.evaluated()
            x = [r["reward_evals"] for r in rows]
            for ax, key in zip(axes, ("kl_q_posterior", "kl_posterior_q")):
                ax.plot(x, [r[key] for r in rows], color=CYCLE[i % len(CYCLE)], label=label,
                        ls="--" if ("grpo" in label or "k3" in label) else
                        ":" if ("dpo" in label or "bon" in label) else "-")
        prior = br.compare(post.prior_log_probs, post)
        for ax, key, name in ((axes[0], "kl_q_posterior", "KL(q || $\\pi^*$)"),
                              (axes[1], "kl_posterior_q", "KL($\\pi^*$ || q)")):
            ax.axhline(getattr(prior, key), color="grey", ls=":", lw=1, label="prior $\\pi_0$")
            ax.set_yscale("log")
            ax.set_xlabel("reward evaluations")
            ax.set_ylabel(f"exact {name} [nats]")
        axes[0].set_title("Reverse KL to the posterior")
        axes[1].set_title("Forward KL to the posterior")
        axes[1].legend(fontsize=8)
    return fig


def plot_policies_on_frontier(results: dict, post, title: str):
    """The exact frontier of pi*_beta' near beta (KL(pi*_beta' || pi0), E[r]), each policy a star, pi* a ring."""
    front = posterior_frontier(post, beta_grid(post.beta / 3, post.beta * 6, 40))
    front.append(FrontierPoint("prior (beta = inf)", "posterior", 0.0, post.prior_mean_reward))
    pts = [policy_point(policy, post, label=label) for label, (policy, _, _) in results.items()]
    pts.append(FrontierPoint(f"$\\pi^*$ (beta = {post.beta:g})", "target", post.kl_to_prior, post.mean_reward))
    return plot_frontier(front + pts, title=title)  # zooms on the policies and pi* when the curve runs far


def write_table(rows: list[dict], out: Path) -> None:
    (out / "result.json").write_text(json.dumps(rows, indent=1))
    with open(out / "result.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def write_curves(results: dict, out: Path) -> None:
    with open(out / "curves.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["objective", "step", "reward_evals", "kl_q_posterior", "kl_posterior_q"])
        for label, (_, history, _) in results.items():
            for r in history.evaluated():
                w.writerow([label, r["step"], r["reward_evals"], r["kl_q_posterior"], r["kl_posterior_q"]])


def print_table(rows: list[dict], post) -> None:
    print(f"beta log Z = {post.optimal_objective:.4f}; E_pi*[r] = {post.mean_reward:.4f}, "
          f"KL(pi* || pi0) = {post.kl_to_prior:.4f}; {rows[0]['reward_evals']} reward evaluations each")
    head = (f"{'objective':<20}{'KL(q||pi*)':>11}{'tail':>9}{'KL(pi*||q)':>11}{'tail':>9}"
            f"{'KL(q||pi0)':>11}{'E_q[r]':>9}{'gap J':>9}{'s':>6}")
    print(head)
    for r in rows:
        print(f"{r['objective']:<20}{r['kl_q_posterior']:>11.4f}{r['kl_q_posterior_tail']:>9.4f}"
              f"{r['kl_posterior_q']:>11.4f}{r['kl_posterior_q_tail']:>9.4f}{r['kl_q_prior']:>11.4f}"
              f"{r['mean_reward']:>9.4f}{r['gap_to_beta_log_z']:>9.4f}{r['wall_s']:>6.1f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="analysis_out/objectives")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--samples-per-prompt", type=int, default=32)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--lr", type=float, default=None, help="one learning rate for every run (default: "
                    "each objective's TrainerConfig default, 3e-4 for PPO and 1e-3 otherwise)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompt", default="the movie was")
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=4)
    ap.add_argument("--objectives", nargs="+", choices=list(RUNS), default=list(RUNS), metavar="NAME",
                    help=f"which runs, among {list(RUNS)}")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads during the run (the tiny model gains nothing from more, and "
                         "several threads on a busy 2-core machine ran 50 steps 75x slower)")
    args = ap.parse_args(argv)
    with torch_threads(args.threads):
        return _run(args)


def _run(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = br.demo_target(args.beta, args.max_new_tokens)
    post = br.exact_posterior(target, args.prompt)
    results = train_all(target, post, {k: RUNS[k] for k in args.objectives}, args.steps,
                        args.samples_per_prompt, args.eval_every, args.seed, args.lr)
    rows = [summarise(label, *res, post) for label, res in results.items()]
    save_figure(plot_curves(results, post), out / "kl_vs_reward_evals")
    fig = plot_policies_on_frontier(results, post, f"Trained policies on the exact frontier ({args.prompt!r}, "
                                                   f"beta={args.beta:g})")
    save_figure(fig, out / "frontier")
    write_table(rows, out)
    write_curves(results, out)
    print_table(rows, post)
    meta = {"beta_log_z": post.optimal_objective, "log_z": post.log_z, "posterior_mean_reward": post.mean_reward,
            "posterior_kl_to_prior": post.kl_to_prior, "num_completions": post.num_completions,
            "steps": args.steps, "samples_per_prompt": args.samples_per_prompt, "seed": args.seed,
            "lr": args.lr}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    if any(not math.isfinite(r["kl_q_posterior"]) for r in rows):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
