"""Claim: reward maximisation without the KL term collapses the distribution; the posterior keeps
its diversity.

On the default model (exact enumeration):

1. beta sweep, one enumeration re-tilted: entropy H(pi*_beta), E[r] and KL(pi*_beta || pi0)
   against beta; as beta -> 0 the posterior concentrates on the reward maximisers.
2. optimisation over every distribution on the table (free logits, Adam), from the prior:
   maximising E_q[r] alone drives the entropy towards 0 (a few top-reward completions), while
   maximising E_q[r] - beta KL(q || pi0) converges to H(pi*_beta).

    python analysis/diversity_vs_beta.py [--out analysis/out/diversity] [--beta 1.0]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib
import torch
from tqdm.auto import tqdm

import bayes_rlhf as br
from bayes_rlhf.diagnostics.frontier import beta_grid, posterior_frontier
from bayes_rlhf.plots import new_figure, plot_training, save_figure
from bayes_rlhf.plots.style import PAPER_RC


def entropy(lq: torch.Tensor) -> float:
    q = lq.exp()
    return float(-(q * torch.where(q > 0, lq, 0.0)).sum())


def optimise(post, beta: float | None, steps: int, lr: float = 0.1) -> list[float]:
    """Entropy of q every 10 steps while maximising E_q r (beta None) or E_q r - beta KL(q||pi0)."""
    logits = post.prior_log_probs.clone().requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=lr)
    out = []
    for step in tqdm(range(steps + 1), desc=f"beta={beta}"):
        lq = torch.log_softmax(logits, 0)
        q = lq.exp()
        j = (q * post.rewards).sum()
        if beta is not None:
            j = j - beta * (q * (lq - post.prior_log_probs)).sum()
        if step % 10 == 0:
            out.append(entropy(lq.detach()))
        opt.zero_grad()
        (-j).backward()
        opt.step()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="analysis/out/diversity")
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--prompt", default="the movie was")
    ap.add_argument("--max-new-tokens", type=int, default=3)
    args = ap.parse_args(argv)
    out = Path(args.out)
    lm, reward = br.default_model()
    post = br.exact_posterior(br.Target(lm, reward, args.beta, args.max_new_tokens), args.prompt)
    pts = posterior_frontier(post, beta_grid(0.02, 50.0, 40))
    with matplotlib.rc_context(PAPER_RC):
        fig, (a1, a2) = new_figure(ncols=2, width=4.2)
        a1.semilogx([p.beta for p in pts], [p.entropy for p in pts], color="#1f77b4", label="H($\\pi^*_\\beta$)")
        a1.axhline(post.prior_entropy, color="grey", ls="--", lw=1, label="H($\\pi_0$)")
        a1.set_xlabel("$\\beta$")
        a1.set_ylabel("entropy [nats]")
        a1.legend()
        a2.semilogx([p.beta for p in pts], [p.reward for p in pts], color="#d62728")
        a2.axhline(float(post.rewards.max()), color="k", ls=":", lw=1, label="max reward")
        a2.set_xlabel("$\\beta$")
        a2.set_ylabel("E$_{\\pi^*_\\beta}$[r]")
        a2.legend()
        save_figure(fig, out / "entropy_vs_beta")
    reward_only = optimise(post, None, args.steps)
    regularised = optimise(post, args.beta, args.steps)
    steps = list(range(0, args.steps + 1, 10))
    fig = plot_training(steps, {"max E[r] (no KL)": reward_only, f"max E[r] - {args.beta:g} KL": regularised},
                        references={"H($\\pi^*$)": post.entropy}, ylabel="entropy H(q) [nats]",
                        title="Diversity during optimisation")
    save_figure(fig, out / "entropy_during_optimisation")
    n_max = int((post.rewards == post.rewards.max()).sum())
    result = {"prior_entropy": post.prior_entropy, "posterior_entropy": post.entropy,
              "reward_only_final_entropy": reward_only[-1], "regularised_final_entropy": regularised[-1],
              "num_max_reward_completions": n_max, "log_num_max_reward_completions": math.log(n_max),
              "entropy_at_smallest_beta": pts[0].entropy, "beta": args.beta}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
