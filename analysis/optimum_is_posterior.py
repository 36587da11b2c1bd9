"""Claim: the optimum of the KL-regularised RL objective is the posterior, with value beta log Z.

    J(q) = E_q[r] - beta KL(q || pi0) = beta log Z - beta KL(q || pi*)

On the default model (exact enumeration) we (1) maximise J by gradient ascent over *every*
distribution on the completion table (free logits, no model restriction) and watch
KL(q || pi*) -> 0 and J -> beta log Z; (2) trace J along two one-parameter families through pi*:
geometric mixtures q_a ∝ pi0^(1-a) pi*^a and posteriors at other betas, both peaking at pi*.

    python analysis/optimum_is_posterior.py [--out analysis/out/optimum] [--steps 400]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

import bayes_rlhf as br
from bayes_rlhf.diagnostics.frontier import retilt
from bayes_rlhf.plots import new_figure, plot_training, save_figure
from bayes_rlhf.plots.style import PAPER_RC


def ascend(post, steps: int, lr: float = 0.1):
    """Adam on free logits over the table, maximising E_q r - beta KL(q || pi0) exactly."""
    logits = post.prior_log_probs.clone().requires_grad_(True)  # start at the prior
    opt = torch.optim.Adam([logits], lr=lr)
    rows = []
    for step in tqdm(range(steps + 1), desc="gradient ascent"):
        lq = torch.log_softmax(logits, 0)
        q = lq.exp()
        objective = (q * post.rewards).sum() - post.beta * (q * (lq - post.prior_log_probs)).sum()
        if step % 10 == 0:
            c = br.compare(lq.detach(), post)
            rows.append({"step": step, "objective": float(objective.detach()), "kl_q_posterior": c.kl_q_posterior})
        opt.zero_grad()
        (-objective).backward()
        opt.step()
    return rows


def families(post, grid):
    """J along geometric mixtures (a) and along posteriors at other betas (b')."""
    mix = [br.compare(torch.log_softmax((1 - a) * post.prior_log_probs + a * post.log_probs, 0), post).objective
           for a in grid["a"]]
    tilt = [br.compare(retilt(post, b).log_probs, post).objective for b in grid["beta"]]
    return mix, tilt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="analysis/out/optimum")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--prompt", default="the movie was")
    ap.add_argument("--max-new-tokens", type=int, default=3)
    args = ap.parse_args(argv)
    out = Path(args.out)
    lm, reward = br.default_model()
    post = br.exact_posterior(br.Target(lm, reward, 1.0, args.max_new_tokens), args.prompt)
    rows = ascend(post, args.steps)
    fig = plot_training([r["step"] for r in rows], {"KL(q || $\\pi^*$)": [r["kl_q_posterior"] for r in rows]},
                        log_y=True, title="Maximising J(q) over all distributions")
    save_figure(fig, out / "ascent_kl")
    grid = {"a": torch.linspace(0, 2, 41).tolist(), "beta": torch.logspace(-1, 1, 41).tolist()}
    mix, tilt = families(post, grid)
    import matplotlib

    with matplotlib.rc_context(PAPER_RC):
        fig, (a1, a2) = new_figure(ncols=2, width=4.2)
        a1.plot(grid["a"], mix, color="#d62728")
        a1.set_xlabel("a in $q_a \\propto \\pi_0^{1-a}\\,\\pi^{*a}$")
        a2.semilogx(grid["beta"], tilt, color="#1f77b4")
        a2.set_xlabel("$\\beta'$ of $q = \\pi^*_{\\beta'}$")
        for ax, x in ((a1, 1.0), (a2, post.beta)):
            ax.axhline(post.optimal_objective, color="k", ls="--", lw=1, label="$\\beta \\log Z$")
            ax.axvline(x, color="grey", ls=":", lw=1)
            ax.set_ylabel("J(q) = E[r] - $\\beta$ KL(q || $\\pi_0$)")
            ax.legend()
        save_figure(fig, out / "objective_families")
    result = {"beta_log_z": post.optimal_objective, "final_objective": rows[-1]["objective"],
              "final_kl_q_posterior": rows[-1]["kl_q_posterior"], "max_over_mixtures": max(mix),
              "argmax_a": grid["a"][mix.index(max(mix))], "max_over_betas": max(tilt),
              "argmax_beta": grid["beta"][tilt.index(max(tilt))], "num_completions": post.num_completions}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
