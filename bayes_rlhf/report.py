"""``write_report(run_dir)``: a self-contained HTML report of a run directory.

Reads what ``save_run`` wrote (see ``bayes_rlhf.diagnostics.run_dir`` for the layout), and for
each prompt draws and tabulates::

    summary      log Z, E[r] under prior and posterior, KL(pi* || pi0), entropies (one row each)
    comparisons  exact KL both ways, TV and objective of each policy (one column per policy)
    top          the most probable completions under pi*, with prior probabilities and rewards
    frontier     exact E[r] vs KL(. || pi0) over a beta grid (one enumeration, re-tilted), the
                 run's pi*, the prior, every policy, best-of-N and the saved samplers; zoomed on
                 the marked points with an overview of the whole curve
    rewards      reward distributions under prior, posterior and each policy
    positions    exact expected per-token KL (both ways) at each position, per policy
    tokens       next-token distributions after the empty prefix and after the posterior's
                 most probable first token: prior, posterior, policies (readable token text)
and, once per run, training curves (exact KLs apart from per-batch estimates) and
importance-weight diagnostics. Every caption says what its figure draws. Figures are written
to RUN_DIR/figures/ as PDF and PNG; the HTML embeds the PNGs (or links them with
``embed_figures=False``). Cell formatting and tables are in ``bayes_rlhf.report_html``.
"""

from __future__ import annotations

import html
import math
import os
import tempfile
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from bayes_rlhf._checks import is_real
from bayes_rlhf.diagnostics.exact import compare, position_kl
from bayes_rlhf.diagnostics.frontier import (FrontierPoint, best_of_n_points, policy_point, posterior_frontier,
                                             sampler_point)
from bayes_rlhf.diagnostics.run_dir import Run, load_run
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.io import umask_permissions
from bayes_rlhf.plots import (TokenLabels, plot_frontier, plot_log_z, plot_reward_histograms, plot_token_distributions,
                              plot_training_panels, plot_weight_diagnostics)
from bayes_rlhf.report_html import CSS, Figures, control_section, listing, table, vertical

__all__ = ["write_report"]

DEFAULT_BEST_OF_N = (1, 4, 16, 64)

_HISTORY_PANELS = (  # (title, ylabel, {column: legend label}); columns a history lacks are skipped
    ("Distance to the posterior $\\pi^*$", "KL [nats]",
     {"kl_q_posterior": "KL(q || $\\pi^*$), exact", "kl_posterior_q": "KL($\\pi^*$ || q), exact",
      "kl_q_posterior_est": "KL(q || $\\pi^*$), sandwich estimate",
      "kl_posterior_q_est": "KL($\\pi^*$ || q), sandwich estimate", "kl_sandwich": "EUBO − ELBO"}),
    ("Objective and reward (per-batch estimates)", "reward units",
     {"objective": "objective J = E[r] − β KL(q || $\\pi_0$)", "mean_reward": "mean reward E$_q$[r]"}),
    ("KL to the prior (per-batch estimate)", "KL [nats]", {"kl_prior": "KL(q || $\\pi_0$), one batch"}),
)


def _table_next_token(log_q: torch.Tensor, post, prefix: list[int]) -> torch.Tensor:
    """q(next token | prefix) [V] from log q over the table (rows extending the prefix)."""
    lo, hi = post.prefix_range(prefix)
    rows = torch.arange(lo, hi)
    rows = rows[post.mask[rows, len(prefix)]]
    mass = torch.zeros(post.vocabulary.size, dtype=torch.float64).index_add_(
        0, post.completion_ids[rows, len(prefix)], log_q[rows].double().exp())
    return mass / mass.sum() if float(mass.sum()) > 0 else mass


def _position_table(run: Run, post, i: int) -> str:
    """Expected per-token KL at each position, one column per policy and direction, and their sums."""
    cols = {}
    for label, lq in run.policies.items():
        cols[f"{label}: KL(π* ‖ q)"] = position_kl(lq[i], post).tolist()
        cols[f"{label}: KL(q ‖ π*)"] = position_kl(lq[i], post, "reverse").tolist()
    T = len(next(iter(cols.values())))
    rows = [{"position t": str(t + 1), **{c: max(v[t], 0.0) for c, v in cols.items()}} for t in range(T)]
    rows.append({"position t": "sum = total KL (nats)", **{c: max(sum(v), 0.0) for c, v in cols.items()}})
    return table(rows)


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
    pts.append(FrontierPoint("prior $\\pi_0$", "prior", 0.0, post.prior_mean_reward))
    pts.append(FrontierPoint(f"$\\pi^*$ at the run's $\\beta$ = {post.beta:g}", "target", post.kl_to_prior,
                             post.mean_reward))
    pts += [policy_point(lq[i], post, label=f"policy {label}") for label, lq in policies.items()]
    if best_of_n:
        try:
            pts += best_of_n_points(post, best_of_n)
        except ConfigError:
            pass  # no best-of-N distribution in this installation: the figure goes without it
    return pts


def _frontier_caption(points, fig, grid) -> str:
    kinds = {p.kind for p in points}
    parts = [f"Exact reward–KL frontier of π*_β for β from {min(grid):.2g} to {max(grid):.2g} (blue curve)",
             "π* at the run's β (black ring)", "the prior π₀ (grey square)"]
    policies = [p.label.removeprefix("policy ") for p in points if p.kind == "policy"]
    if policies:
        parts.append(f"policy {listing(policies)} (exact, stars)")
    if "best_of_n" in kinds:
        ns = [str(p.n) for p in points if p.kind == "best_of_n"]
        parts.append(f"best-of-N for N = {', '.join(ns)} (exact, green; dashed: its KL bound)")
    samplers = [p.label.removesuffix(" (empirical)") for p in points if p.kind == "sampler"]
    if samplers:
        parts.append(f"sampler {listing(samplers)} (hollow markers: the weighted empirical distribution of the "
                     "draws, whose plug-in KL to π₀ is biased upwards)")
    text = "; ".join(parts) + ". KL in nats."
    if len(fig.axes) == 3:  # plot_frontier zoomed: main, overview, legend
        text += " The left panel is zoomed on the marked points; the right one shows the whole curve."
    return text


def _token_figures(run: Run, post, i: int, figs: "Figures") -> list[str]:
    """Next-token distributions after the empty prefix and after pi*'s most probable first token."""
    labels = TokenLabels(post.vocabulary.tokenizer, post.vocabulary.size)
    prefixes = [[]]
    top = int(post.token_posterior([]).argmax())
    if post.completion_ids.shape[1] > 1 and top != post.vocabulary.eos_token_id:
        prefixes.append([top])
    drawn = listing(["the exact posterior π*", "the prior π₀"] + [f"policy {p}" for p in run.policies])
    out = []
    for j, prefix in enumerate(prefixes):
        dists = {"exact posterior $\\pi^*$": post.token_posterior(prefix), "prior $\\pi_0$": post.token_prior(prefix)}
        dists.update({f"policy {label}": _table_next_token(lq[i], post, prefix) for label, lq in run.policies.items()})
        shown = "".join(labels[t] for t in prefix)
        where = (f"the first completion token after the prompt {_prompt_text(post.prompt)}" if not prefix else
                 f"the token after the completion prefix “{shown}” (the posterior's most probable first token)")
        fig = plot_token_distributions(labels, dists, prefix=shown)
        out.append(figs.add(fig, f"tokens_{i}_{j}", f"Next-token distribution of {where} under {drawn}."
                            + _token_notes(fig, shown)))
    return out


def _token_notes(fig, prefix: str) -> str:
    """What the caption must say about a token figure: visible spaces, the pooled 'other' bar."""
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    notes = [" Spaces are shown as ␣."] if any("␣" in t for t in ticks + [prefix]) else []
    if ticks and ticks[-1].startswith("other ("):
        notes.append(f" The hatched bar '{ticks[-1]}' pools the remaining tokens (below 0.5% under every "
                     "distribution, or beyond the 12 most probable).")
    return "".join(notes)


def _prompt_text(prompt: str) -> str:
    return repr(prompt) if prompt else "'' (the empty prompt)"


def _prompt_section(run: Run, i: int, figs: "Figures", betas, best_of_n) -> str:
    post = run.posteriors[i]
    parts = [f"<h2>Prompt {i}: {html.escape(_prompt_text(post.prompt))}</h2>"]
    tables = [vertical({"exact posterior π*": {k: v for k, v in post.summary().items() if k != "prompt"}},
                        "quantity (nats; rewards in their units)")]
    comps = {label: compare(lq[i], post).as_dict() for label, lq in run.policies.items()}
    if comps:
        tables.append(vertical(comps, "policy q against π* (exact)"))
    parts.append('<div class="tables">' + "".join(tables) + "</div>")
    parts += ["<h3>Most probable completions under the posterior</h3>", table([{k: v for k, v in row.items() if k != "index"} for row in post.top(10)])]
    points = _frontier_points(post, run.policies, i, betas, best_of_n) + _sampler_points(run, post, i)
    fig = plot_frontier(points)
    grid = [p.beta for p in points if p.kind == "posterior"]
    parts.append(figs.add(fig, f"frontier_{i}", _frontier_caption(points, fig, grid)))
    hist = {"prior $\\pi_0$": (post.rewards, post.prior_log_probs.exp()),
            "exact posterior $\\pi^*$": (post.rewards, post.probs)}
    hist.update({f"policy {label}": (post.rewards, lq[i].exp()) for label, lq in run.policies.items()})
    drawn = listing(["the prior π₀", "the exact posterior π*"] + [f"policy {p}" for p in run.policies])
    levels = torch.unique(post.rewards[torch.isfinite(post.rewards)]).numel()
    how = ("bars at each reward value; values below probability 0.001 under all of them at either end of the "
           "range are not drawn" if levels <= 25 else "step histograms of 30 bins")
    side = [figs.add(plot_reward_histograms(hist), f"rewards_{i}", f"Exact reward distribution under {drawn} "
                     f"(every completion of the table weighted by its probability; {how}).")]
    if run.policies:
        side.append("<div><h3>Expected KL per token position t</h3>"
                    + _position_table(run, post, i) + "</div>")
    parts.append('<div class="tables">' + "".join(side) + "</div>")
    parts += _token_figures(run, post, i, figs)
    return "\n".join(parts)


def _history_panels(rows: list[dict]) -> list[tuple]:
    """(title, ylabel, {legend name: values per step}) for each ``_HISTORY_PANELS`` entry the history has."""
    panels = []
    for title, ylabel, names in _HISTORY_PANELS:
        series = {name: [math.nan if r.get(col) is None else float(r[col]) for r in rows]
                  for col, name in names.items() if any(isinstance(r.get(col), (int, float)) for r in rows)}
        if series:
            panels.append((title, ylabel, series))
    return panels


def _history_figure(label: str, rows: list[dict], figs: "Figures") -> str:
    panels = _history_panels(rows)
    if not panels:
        return ""
    titles = [t.replace("$\\pi^*$", "π*") for t, _, _ in panels]
    notes = []
    if any("exact" in name for _, _, series in panels for name in series):
        notes.append("Exact KLs are computed from the enumerated tables at evaluated steps (dots), averaged over "
                     "the evaluation prompts.")
    if any("per-batch" in t for t in titles):
        notes.append("Per-batch estimates come from one batch of samples and are noisy.")
    return figs.add(plot_training_panels([r.get("step", j) for j, r in enumerate(rows)], panels),
                    f"training_{_safe(label)}", f"Training run {label}, left to right: " + "; ".join(titles) + ". "
                    + " ".join(notes))


def _run_sections(run: Run, figs: "Figures") -> str:
    parts = [_history_figure(label, rows, figs) for label, rows in run.histories.items()]
    parts = (["<h2>Training</h2>"] if any(parts) else []) + parts
    study = run.summary.get("extra", {}).get("log_z_vs_particles")
    if study:
        parts += [f"<h2>log Z against the number of particles (prompt {html.escape(_prompt_text(study['prompt']))})"
                  "</h2>",
                  figs.add(plot_log_z(study["num_particles"], study["estimates"], exact_log_z=study["exact_log_z"],
                                      title="log Z estimates of repeated runs"),
                           "log_z_particles", "log Z estimates of repeated runs (one dot per run; series side by "
                           "side at each number of particles); dashed: the exact log Z.")]
    exact = [p.log_z for p in run.posteriors]
    rows = []
    for label, info in run.summary["samples"].items():
        for i, d in enumerate(info["diagnostics"]):
            row = {"sampler": label, "prompt": i, **{k: v for k, v in d.items() if k != "log_z"}}
            row["khat"] = float(row["khat"])  # saved as the string '-inf' when every weight is equal
            if "log_z" in d:
                row["log Ẑ (estimate)"] = float(d["log_z"])
            row["exact log Z"] = exact[i] if i < len(exact) else math.nan
            rows.append(row)
    if rows:
        names = [f"{r['sampler']}, prompt {r['prompt']}" for r in rows]
        parts += ["<h2>Samplers: importance weights</h2>", table(rows),
                  figs.add(plot_weight_diagnostics(names, [float(r["ess_fraction"]) for r in rows],
                                                   [r["khat"] for r in rows]),
                           "weights", "Kish ESS / n (left) and PSIS k̂ (right; dotted, dashed, solid: 0.5, 0.7, 1) "
                           "of each sampler's importance weights, per prompt."
                           + (" A k̂ below −1 (bounded weights) is drawn pale, cut at −1, with its value written."
                              if any(r["khat"] < -1 for r in rows) else ""))]
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
    if betas is not None:  # the user's values, before the run's own beta joins the grid
        bad = [b for b in betas if not (is_real(b) and math.isfinite(b) and b > 0)]
        if bad or not list(betas):
            raise ConfigError(f"betas must be finite numbers > 0, got {list(betas)}")
    run = load_run(run_dir)
    figs = Figures(run.path, embed_figures)
    s = run.summary
    head = (f"<h1>bayes_rlhf report</h1><p>Run <code>{html.escape(str(run.path))}</code>, created "
            f"{html.escape(s['created'])}: posterior π*(x | c) ∝ π₀(x | c) exp(r(c, x) / β) with "
            f"β = {s['beta']:g}, "
            f"completions of at most {s['max_new_tokens']} tokens, {len(run.posteriors)} prompt(s), "
            f"policies: {html.escape(', '.join(run.policies) or 'none')}. Every divergence and entropy is exact "
            "(from the enumerated table) unless marked as an estimate, in nats. The InferenceData file is "
            '<a href="inference_data.nc">inference_data.nc</a>.</p>')
    head += control_section(s.get("extra", {}).get("control"))  # lambda and moments, or a budget's beta
    sections = [_prompt_section(run, i, figs, betas, best_of_n)
                for i in tqdm(range(len(run.posteriors)), desc="report", disable=not progress)]
    sections.append(_run_sections(run, figs))
    doc = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>bayes_rlhf report</title>"
           f"<style>{CSS}</style></head><body>{head}{''.join(sections)}</body></html>")
    out = run.path / "report.html"
    fd, tmp = tempfile.mkstemp(prefix=".report.", suffix=".html", dir=run.path)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(doc)
    umask_permissions(Path(tmp))  # mkstemp makes the file private; published files get the umask's mode
    os.replace(tmp, out)
    return out
