"""Helpers shared by subcommands: printing a posterior, writing its tables."""

from __future__ import annotations

from pathlib import Path

from bayes_rlhf.exact.posterior import ExactPosterior
from bayes_rlhf.io import write_csv


def show_prompt(prompt: str) -> str:
    return repr(prompt) if prompt else "'' (BOS only)"


def format_posterior(post: ExactPosterior, k: int = 5) -> str:
    """A readable summary: log Z, E[r] under prior and posterior, KL, the top completions."""
    s = post.summary()
    lines = [
        f"prompt {show_prompt(post.prompt)}: {s['num_completions']:,} completions, beta = {s['beta']:g}",
        f"  log Z = {s['log_z']:.4f}    optimum of E_q[r] - beta KL(q||pi0) = beta log Z = {s['optimal_objective']:.4f}",
        f"  E[r]: prior {s['prior_mean_reward']:.4f} -> posterior {s['posterior_mean_reward']:.4f}",
        f"  KL(pi* || pi0) = {s['kl_posterior_prior']:.4f} nats   entropy: prior {s['prior_entropy']:.3f}, "
        f"posterior {s['posterior_entropy']:.3f} nats",
    ]
    for by in ("prior", "posterior"):
        lines.append(f"  most probable under the {by}:   (prior p, posterior p, reward)")
        for row in post.top(k, by=by):
            lines.append(f"    {row['completion']!r:40s} {row['prior']:.4f}  {row['posterior']:.4f}  {row['reward']:+.2f}")
    return "\n".join(lines)


def write_top_completions(path: Path, posteriors: list[ExactPosterior], k: int = 20) -> None:
    rows = []
    for post in posteriors:
        for by in ("prior", "posterior"):
            for rank, row in enumerate(post.top(k, by=by)):
                rows.append({"prompt": post.prompt, "ranked_by": by, "rank": rank + 1, **row})
    write_csv(path, rows)
