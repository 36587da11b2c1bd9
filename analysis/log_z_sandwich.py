"""Claim: importance estimates of log Z are sandwiched by the ELBO and the EUBO, and their
error shrinks with the number of particles.

With proposal q = pi0 (ancestral samples of the default model) and lw = r / beta (+ log pi0 - log q = 0):

    ELBO = E_q[lw]  <=  E[log Z_IS(N)]  <=  log Z  <=  E[log Z_RIS(N)]  <=  EUBO = E_pi*[lw]

where Z_IS is the importance (mean of weights) estimate from N draws of q and Z_RIS the reverse
(harmonic mean) estimate from N exact posterior draws. The exact log Z comes from enumeration.

    python analysis/log_z_sandwich.py [--out analysis/out/log_z] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import bayes_rlhf as br
from bayes_rlhf.diagnostics.sampled import forward_kl, reverse_kl
from bayes_rlhf.plots import plot_log_z, save_figure


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="analysis/out/log_z")
    ap.add_argument("--prompt", default="the movie was")
    ap.add_argument("--beta", type=float, default=0.5)
    ap.add_argument("--max-new-tokens", type=int, default=3)
    ap.add_argument("--ns", type=int, nargs="+", default=[4, 16, 64, 256, 1024])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    lm, reward = br.default_model()
    target = br.Target(lm, reward, args.beta, args.max_new_tokens)
    post = br.exact_posterior(target, args.prompt)
    g = torch.Generator().manual_seed(args.seed)
    series = {"ELBO (q = $\\pi_0$)": [], "log $\\hat Z$ importance": [], "log $\\hat Z$ reverse IS": [],
              "EUBO ($\\pi^*$ draws)": []}
    for n in args.ns:
        rows = {k: [] for k in series}
        for _ in range(args.repeats):
            s = lm.sample(args.prompt, n, args.max_new_tokens, generator=g)
            r = target.rewards(args.prompt, s.ids, s.mask)
            rev = reverse_kl(s.log_probs, s.log_probs, r, args.beta)
            p = post.sample(n, generator=g)
            idx = torch.tensor([post.index_of(row[m].tolist()) for row, m in zip(p.ids, p.mask)])
            fwd = forward_kl(post.prior_log_probs[idx], post.prior_log_probs[idx], post.rewards[idx], args.beta)
            for k, v in zip(series, (rev.elbo.value, rev.log_z.value, fwd.log_z.value, fwd.eubo.value)):
                rows[k].append(v)
        for k in series:
            series[k].append(rows[k])
    vals = {k: torch.tensor(v, dtype=torch.float64) for k, v in series.items()}  # [len(ns), repeats]
    means = {k: v.mean(1) for k, v in vals.items()}
    two_se = {k: 2 * v.std(1) / args.repeats ** 0.5 for k, v in vals.items()} if args.repeats > 1 else None
    fig = plot_log_z(args.ns, means, stderrs=two_se, exact_log_z=post.log_z,
                     title=f"log Z sandwich ({args.prompt!r}, $\\beta$={args.beta:g}), mean $\\pm$ 2 se")
    save_figure(fig, out / "log_z_sandwich")
    result = {"exact_log_z": post.log_z, "ns": args.ns,
              **{k: v.tolist() for k, v in means.items()}}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
