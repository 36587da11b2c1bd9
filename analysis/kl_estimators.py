"""Claim: of the usual estimators of KL(q || pi0), k1 and k3 are unbiased (k3 summed over tokens too),
k2 is not; and their gradients differ: k1 in the reward follows grad KL(q || pi0), k3 in the loss
follows the forward KL's gradient (exactly, for the sequence-level k3) and drifts from the reverse one.

Exact, on the default model: q = pi*_beta (the exact posterior of the sentiment reward) for a grid of
beta, so KL(q || pi0) grows as beta falls; every number is a sum over the enumerated table
(``bayes_rlhf.diagnostics.kl_estimators``), none is sampled.

    python analysis/kl_estimators.py [--out analysis/out/kl_estimators] [--max-new-tokens 3]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import bayes_rlhf as br
from bayes_rlhf.diagnostics.frontier import beta_grid, retilt
from bayes_rlhf.diagnostics.kl_estimators import kl_estimators
from bayes_rlhf.plots import PAPER_RC, save_figure

ESTIMATORS = ("k1", "k2", "k3", "k2 per token", "k3 per token")
GRADIENTS = ("k1 in reward", "k3 in reward", "k2 in loss, per token", "k3 in loss, per token",
             "k3 in loss, sequence")
STYLE = {"k1": "#1f77b4", "k2": "#ff7f0e", "k3": "#2ca02c", "k2 per token": "#d62728", "k3 per token": "#9467bd",
         "k1 in reward": "#1f77b4", "k3 in reward": "#8c564b", "k2 in loss, per token": "#d62728",
         "k3 in loss, per token": "#9467bd", "k3 in loss, sequence": "#2ca02c"}


def lab_rows(post, betas) -> list[dict]:
    """One row per beta: KL both ways, each estimator's bias and sd, each gradient's cosines and variance."""
    rows = []
    for b in betas:
        q = retilt(post, b)
        rep = kl_estimators(q.log_probs, q.prior_log_probs, q.completion_ids, q.mask)
        row = {"beta": b, "kl": rep.kl, "forward_kl": rep.forward_kl}
        for name, e in rep.estimators.items():
            row[f"{name}: bias"], row[f"{name}: sd"] = e.bias, e.sd
        for name, g in rep.gradients.items():
            row[f"{name}: cos reverse"], row[f"{name}: cos forward"] = g.cosine_reverse, g.cosine_forward
            row[f"{name}: relative bias"] = g.bias_norm / float(rep.grad_reverse.norm())
            row[f"{name}: variance"] = g.variance
        rows.append(row)
    return rows


def draw(rows: list[dict], title: str) -> Figure:
    with matplotlib.rc_context(PAPER_RC):
        fig = Figure(figsize=(10.5, 7.4), layout="constrained")
        FigureCanvasAgg(fig)
        (a, b), (c, d) = fig.subplots(2, 2)
        kl = [r["kl"] for r in rows]
        for name in ESTIMATORS:
            a.plot(kl, [r[f"{name}: bias"] for r in rows], "o-", ms=3, color=STYLE[name], label=name)
            b.semilogy(kl, [r[f"{name}: sd"] for r in rows], "o-", ms=3, color=STYLE[name], label=name)
        a.set(xlabel="KL(q || $\\pi_0$) [nats, log scale]", ylabel="bias E$_q$[k] − KL [nats]",
              title="Bias (k1, k3 and per-token k3: exactly 0)")
        b.set(xlabel="KL(q || $\\pi_0$) [nats, log scale]", ylabel="sd of one draw [nats]", title="Spread of one draw")
        for name in GRADIENTS:
            c.plot(kl, [r[f"{name}: cos reverse"] for r in rows], "o-", ms=3, color=STYLE[name], label=name)
            d.semilogy(kl, [r[f"{name}: variance"] for r in rows], "o-", ms=3, color=STYLE[name], label=name)
        c.set(xlabel="KL(q || $\\pi_0$) [nats, log scale]", ylabel="cos(E[g], ∇ KL(q || $\\pi_0$))",
              title="Direction of the expected gradient")
        d.set(xlabel="KL(q || $\\pi_0$) [nats, log scale]", ylabel="E ||g − E g||² (one draw)",
              title="Gradient variance")
        for ax in (a, b, c, d):
            ax.set_xscale("log")
            ax.legend(fontsize=8, loc="upper left" if ax is not c else "lower left")
        fig.suptitle(title)
    return fig


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="analysis/out/kl_estimators")
    ap.add_argument("--prompt", default="the movie was")
    ap.add_argument("--max-new-tokens", type=int, default=3)
    ap.add_argument("--betas", type=int, default=14, help="number of betas, log-spaced in [0.2, 10]")
    args = ap.parse_args(argv)
    out = Path(args.out)
    lm, reward = br.default_model()
    post = br.exact_posterior(br.Target(lm, reward, 1.0, args.max_new_tokens), args.prompt)
    rows = lab_rows(post, sorted(beta_grid(0.2, 10.0, args.betas), reverse=True))
    fig = draw(rows, f"KL estimators of q = $\\pi^*_\\beta$ against $\\pi_0$, exact ({post.num_completions:,} "
                     f"completions of {args.prompt!r})")
    save_figure(fig, out / "kl_estimators")
    worst = lambda key: max(abs(r[key]) for r in rows)  # noqa: E731
    result = {"num_completions": post.num_completions, "rows": rows,
              "max_abs_bias": {name: worst(f"{name}: bias") for name in ESTIMATORS + ("k1 per token",)},
              "min_cos_reverse": {name: min(r[f"{name}: cos reverse"] for r in rows) for name in GRADIENTS},
              "min_cos_forward_k3_sequence": min(r["k3 in loss, sequence: cos forward"] for r in rows)}
    (out / "result.json").write_text(json.dumps(result, indent=1, default=lambda x: None if math.isnan(x) else x))
    print(f"{'beta':>7} {'KL':>7} " + " ".join(f"{n + ' sd':>16}" for n in ESTIMATORS))
    for r in rows:
        print(f"{r['beta']:7.3f} {r['kl']:7.3f} " + " ".join(f"{r[n + ': sd']:16.4f}" for n in ESTIMATORS))
    print("largest |bias|:", {k: f"{v:.2e}" for k, v in result["max_abs_bias"].items()})
    print("least cos(E[g], grad KL(q || pi0)):", {k: f"{v:.3f}" for k, v in result["min_cos_reverse"].items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
