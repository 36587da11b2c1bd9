"""``write_report(run_dir)``: a self-contained HTML report of a run directory.

Reads what ``save_run`` wrote (see ``bayes_rlhf.diagnostics.run_dir`` for the layout), and for
each prompt draws and tabulates::

    summary      log Z, E[r] under prior and posterior, KL(pi* || pi0), entropies
    top          the most probable completions under pi*, with prior probabilities and rewards
    frontier     exact E[r] vs KL(. || pi0) over a beta grid (one enumeration, re-tilted),
                 the run's pi*, every policy, best-of-N when available
    rewards      reward histograms under prior, posterior and each policy
    tokens       next-token distributions after the empty prefix and after the posterior's
                 most probable first token: prior, posterior, policies
    positions    exact expected per-token KL (both ways) at each position, per policy
    comparisons  exact KL both ways, TV and objective of each policy
and, once per run, training curves and importance-weight diagnostics. Figures are written
to RUN_DIR/figures/ as PDF and PNG; the HTML embeds the PNGs (or links them with
``embed_figures=False``).
"""

from __future__ import annotations

import base64
import html
import math
import os
import tempfile
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from bayes_rlhf.diagnostics.exact import compare
from bayes_rlhf.diagnostics.frontier import (FrontierPoint, best_of_n_points, policy_point, posterior_frontier,
                                             sampler_point)
from bayes_rlhf.diagnostics.run_dir import Run, RunDirError, TableLM, load_run, save_run
from bayes_rlhf.diagnostics.sampled import position_kl
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.plots import (plot_frontier, plot_log_z, plot_reward_histograms, plot_token_distributions, plot_training,
                              plot_weight_diagnostics, save_figure)

__all__ = ["write_report", "save_run", "load_run", "RunDirError", "Run", "TableLM"]

DEFAULT_BEST_OF_N = (1, 4, 16, 64)

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td.t{text-align:left;font-family:monospace}figure{display:inline-block;margin:0.5em}
img{max-width:520px}figcaption{font-size:0.85em;color:#555}h2{border-bottom:1px solid #ddd}"""


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return html.escape(str(v))


def _table(rows: list[dict]) -> str:
    if not rows:
        return "<p>(none)</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f'<td class="{"t" if isinstance(r[c], str) else ""}">{_fmt(r[c])}</td>'
                                    for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


class _Figures:
    """Saves figures under RUN_DIR/figures and returns their HTML."""

    def __init__(self, run_dir: Path, embed: bool):
        self.dir, self.embed = run_dir / "figures", embed

    def add(self, fig, name: str, caption: str) -> str:
        pdf, png = save_figure(fig, self.dir / name)
        if self.embed:
            src = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
        else:
            src = f"figures/{png.name}"
        return (f'<figure><img src="{src}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)} '
                f'(<a href="figures/{pdf.name}">PDF</a>)</figcaption></figure>')


def _table_next_token(log_q: torch.Tensor, post, prefix: list[int]) -> torch.Tensor:
    """q(next token | prefix) [V] from log q over the table (rows extending the prefix)."""
    lo, hi = post.prefix_range(prefix)
    rows = torch.arange(lo, hi)
    rows = rows[post.mask[rows, len(prefix)]]
    mass = torch.zeros(post.lm.vocab_size, dtype=torch.float64).index_add_(
        0, post.completion_ids[rows, len(prefix)], log_q[rows].double().exp())
    return mass / mass.sum() if float(mass.sum()) > 0 else mass


def _position_rows(run: Run, post, i: int) -> list[dict]:
    rows = []
    for label, lq in run.policies.items():
        fwd, rev = position_kl(lq[i], post), position_kl(lq[i], post, "reverse")
        for t in range(fwd.numel()):
            rows.append({"policy": label, "position": t, "KL(pi* || q) at t": float(fwd[t]),
                         "KL(q || pi*) at t": float(rev[t])})
    return rows


def _sampler_points(run: Run, post, i: int) -> list[FrontierPoint]:
    """Frontier points of saved samples of prompt i whose draws lie in the table (others skipped)."""
    pts = []
    for label, s in run.samples.items():
        if "ids" not in s or s["ids"].shape[1] != post.completion_ids.shape[1]:
            continue
        rows = torch.arange(s["ids"].shape[0]) if "prompt_index" not in s else \
            torch.nonzero(s["prompt_index"] == i).squeeze(-1)
        if rows.numel() == 0:
            continue
        try:
            pts.append(sampler_point(post, s["ids"][rows], s["mask"][rows], label=f"{label} (empirical)",
                                     log_weights=s["log_weights"][rows] if "log_weights" in s else None))
        except ConfigError:
            continue  # draws of another prompt or outside the truncated table
    return pts


def _frontier_points(post, policies: dict, i: int, betas, best_of_n) -> list[FrontierPoint]:
    grid = sorted(set(betas if betas is not None else
                      torch.logspace(-1.3, 1.3, 25, dtype=torch.float64).tolist()) | {float(post.beta)})
    pts = posterior_frontier(post, grid)
    pts.append(FrontierPoint("prior $\\pi_0$", "sampler", 0.0, post.prior_mean_reward))
    pts.append(FrontierPoint(f"$\\pi^*$ ($\\beta$={post.beta:g})", "policy", post.kl_to_prior, post.mean_reward))
    pts += [policy_point(lq[i], post, label=label) for label, lq in policies.items()]
    if best_of_n:
        try:
            pts += best_of_n_points(post, best_of_n)
        except ConfigError:
            pass  # no best-of-N distribution in this installation: the figure goes without it
    return pts


def _prompt_section(run: Run, i: int, figs: _Figures, betas, best_of_n) -> str:
    post = run.posteriors[i]
    title = html.escape(repr(post.prompt))
    parts = [f"<h2>Prompt {i}: {title}</h2>", "<h3>Summary</h3>",
             _table([{k: v for k, v in post.summary().items() if k != "prompt"}]),
             "<h3>Most probable completions under the posterior</h3>", _table(post.top(10))]
    comps = [{"policy": label, **compare(lq[i], post).as_dict()} for label, lq in run.policies.items()]
    if comps:
        parts += ["<h3>Policies against the exact posterior (nats)</h3>", _table(comps)]
    points = _frontier_points(post, run.policies, i, betas, best_of_n) + _sampler_points(run, post, i)
    parts.append(figs.add(plot_frontier(points),
                          f"frontier_{i}", "Reward-KL frontier (KL in nats)"))
    hist = {"prior": (post.rewards, post.prior_log_probs.exp()), "posterior": (post.rewards, post.probs)}
    hist.update({label: (post.rewards, lq[i].exp()) for label, lq in run.policies.items()})
    parts.append(figs.add(plot_reward_histograms(hist), f"rewards_{i}", "Reward distributions"))
    if run.policies:
        parts += ["<h3>Expected per-token KL by position (exact; sums to the totals above)</h3>",
                  _table(_position_rows(run, post, i))]
    tokens = [str(t) for t in post.lm.tokenizer.convert_ids_to_tokens(list(range(post.lm.vocab_size)))]
    first = post.token_posterior([])
    prefixes = [[]]
    top = int(first.argmax())
    if post.completion_ids.shape[1] > 1 and top != post.lm.eos_token_id:
        prefixes.append([top])
    for j, prefix in enumerate(prefixes):
        dists = {"posterior": post.token_posterior(prefix), "prior": post.token_prior(prefix)}
        dists.update({label: _table_next_token(lq[i], post, prefix) for label, lq in run.policies.items()})
        shown = post.lm.decode(torch.tensor([prefix]), torch.ones(1, len(prefix), dtype=torch.bool))[0]
        parts.append(figs.add(plot_token_distributions(tokens, dists, prefix=shown), f"tokens_{i}_{j}",
                              f"Next token after {shown!r}: exact posterior, prior and policies"))
    return "\n".join(parts)


def _run_sections(run: Run, figs: _Figures) -> str:
    parts = []
    for label, rows in run.histories.items():
        steps = [r.get("step", j) for j, r in enumerate(rows)]
        kl_cols = sorted({k for r in rows for k, v in r.items() if "kl" in k.lower() and isinstance(v, (int, float))})
        if not kl_cols:
            continue
        series = {k: [math.nan if r.get(k) is None else float(r[k]) for r in rows] for k in kl_cols}
        parts.append(figs.add(plot_training(steps, series, ylabel="KL [nats]"), f"training_{_safe(label)}",
                              f"Training run {label}: KL columns over steps"))
    study = run.summary.get("extra", {}).get("log_z_vs_particles")
    if study:
        parts += [f"<h2>log Z against the number of particles (prompt {html.escape(repr(study['prompt']))})</h2>",
                  figs.add(plot_log_z(study["num_particles"], study["estimates"], exact_log_z=study["exact_log_z"],
                                      title="log Z estimates of repeated runs"),
                           "log_z_particles", "log Z estimates of repeated runs; dashed: exact log Z")]
    rows = [{"sampler": label, "prompt": i, **d} for label, info in run.summary["samples"].items()
            for i, d in enumerate(info["diagnostics"])]
    if rows:
        names = [f"{r['sampler']} [{r['prompt']}]" for r in rows]
        parts += ["<h2>Samplers: importance weights</h2>", _table(rows),
                  figs.add(plot_weight_diagnostics(names, [float(r["ess_fraction"]) for r in rows],
                                                   [float(r["khat"]) for r in rows]),
                           "weights", "Kish ESS / n and PSIS k-hat (thresholds 0.5, 0.7, 1)")]
    return "\n".join(parts)


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)


def write_report(run_dir: str | os.PathLike, *, betas: Sequence[float] | None = None,
                 best_of_n: Sequence[int] | None = DEFAULT_BEST_OF_N, embed_figures: bool = True,
                 progress: bool = False) -> Path:
    """Write RUN_DIR/report.html (and RUN_DIR/figures/) from a run directory; returns its path.

    Parameters
    ----------
    run_dir : path
        A directory written by ``save_run``; ``RunDirError`` if missing or half-written.
    betas : sequence of float, optional
        The frontier's beta grid (default: 25 values from 0.05 to 20, plus the run's beta).
    best_of_n : sequence of int or None
        N values for best-of-N points (drawn when ``bayes_rlhf.samplers.best_of_n`` exists).
    embed_figures : bool
        Embed PNGs as data URIs (one self-contained file) or reference figures/*.png.
    progress : bool
        Show a progress bar over prompts.
    """
    run = load_run(run_dir)
    figs = _Figures(run.path, embed_figures)
    s = run.summary
    head = (f"<h1>bayes_rlhf report</h1><p>Run <code>{html.escape(str(run.path))}</code>, created "
            f"{html.escape(s['created'])}; beta = {s['beta']:g}, max_new_tokens = {s['max_new_tokens']}, "
            f"{len(run.posteriors)} prompt(s), policies: {html.escape(', '.join(run.policies) or 'none')}. "
            "All divergences in nats. The InferenceData file is "
            '<a href="inference_data.nc">inference_data.nc</a>.</p>')
    sections = [_prompt_section(run, i, figs, betas, best_of_n)
                for i in tqdm(range(len(run.posteriors)), desc="report", disable=not progress)]
    sections.append(_run_sections(run, figs))
    doc = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>bayes_rlhf report</title>"
           f"<style>{_CSS}</style></head><body>{head}{''.join(sections)}</body></html>")
    out = run.path / "report.html"
    fd, tmp = tempfile.mkstemp(prefix=".report.", suffix=".html", dir=run.path)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(doc)
    os.replace(tmp, out)
    return out
