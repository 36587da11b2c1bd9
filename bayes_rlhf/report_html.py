"""HTML pieces of the report: table cells in a reader's names and units, narrow tables, and
figures shown at print size. No statistics here: ``report`` computes, this module formats.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from bayes_rlhf.plots import PAPER_RC, save_figure

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em;display:block;overflow-x:auto;max-width:100%}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3;white-space:nowrap}
th.t,td.t{text-align:left}td.m{font-family:monospace;white-space:pre-wrap}
.tables{display:flex;flex-wrap:wrap;gap:0 2em;align-items:flex-start}
figure{display:inline-block;vertical-align:top;margin:0.5em;max-width:100%}img{max-width:100%;height:auto}
figcaption{font-size:0.85em;color:#555}h2{border-bottom:1px solid #ddd}"""

#: Reader's names of the columns of summaries, comparisons and weight diagnostics.
NAMES = {"beta": "β", "num_completions": "completions enumerated", "log_z": "log Z",
         "optimal_objective": "β log Z (best objective)", "prior_mean_reward": "E[r] under π₀",
         "posterior_mean_reward": "E[r] under π*", "kl_posterior_prior": "KL(π* ‖ π₀)",
         "posterior_entropy": "H(π*)", "prior_entropy": "H(π₀)", "kl_q_posterior": "KL(q ‖ π*)",
         "kl_posterior_q": "KL(π* ‖ q)", "total_variation": "TV(q, π*)",
         "objective": "J(q) = E[r] − β KL(q ‖ π₀)", "mean_reward": "E[r] under q",
         "kl_q_prior": "KL(q ‖ π₀)", "q_outside": "mass of q outside the table", "num_samples": "n",
         "ess": "Kish ESS", "ess_fraction": "ESS / n", "khat": "PSIS k̂", "khat_label": "k̂ verdict",
         "max_weight": "max weight", "completion": "completion", "prior": "π₀(x)",
         "posterior": "π*(x)", "reward": "r(x)"}
#: Columns that are divergences, entropies or masses: never negative, so rounding noise prints as 0.
NONNEGATIVE = {"kl_posterior_prior", "posterior_entropy", "prior_entropy", "kl_q_posterior", "kl_posterior_q",
               "total_variation", "kl_q_prior", "q_outside"}


def fmt(v, key: str = "") -> str:
    """A table cell: 4 significant digits; a tiny negative in a ``NONNEGATIVE`` column prints as 0."""
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        if key in NONNEGATIVE and -1e-6 < v < 0:
            v = 0.0  # float rounding (masses summing to 1 + 4e-9), not a negative divergence
        return f"{v + 0.0:.4g}"  # + 0.0 turns -0.0 into 0.0
    return html.escape(str(v))


def _name(key: str) -> str:
    return NAMES.get(key, key.replace("_", " "))


def _cell(v, key: str) -> str:
    cls = "t m" if key == "completion" else "t" if isinstance(v, str) else ""  # generated text in monospace
    return f'<td class="{cls}">{fmt(v, key)}</td>'


def table(rows: list[dict]) -> str:
    """Rows as columns of a table, headed by ``NAMES``."""
    if not rows:
        return "<p>(none)</p>"
    cols = list(rows[0])
    head = "".join(f'<th class="{"t" if isinstance(rows[0][c], str) else ""}">{html.escape(_name(c))}</th>'
                   for c in cols)
    body = "".join("<tr>" + "".join(_cell(r[c], c) for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def vertical(columns: dict[str, dict], caption: str) -> str:
    """{column title: {key: value}} as a table with one row per key (narrow however many keys)."""
    keys = list(next(iter(columns.values())))
    head = '<th class="t">' + html.escape(caption) + "</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(f'<tr><td class="t">{html.escape(_name(k))}</td>' + "".join(_cell(col.get(k), k)
                                                                              for col in columns.values()) + "</tr>"
                   for k in keys)
    return f"<table><tr>{head}</tr>{body}</table>"


def _png_width(png: Path) -> int:
    return int.from_bytes(png.read_bytes()[16:20], "big")  # IHDR width


class Figures:
    """Saves figures under RUN_DIR/figures and returns their HTML, shown at print size (96 px per inch)."""

    def __init__(self, run_dir: Path, embed: bool):
        self.dir, self.embed = run_dir / "figures", embed

    def add(self, fig, name: str, caption: str) -> str:
        pdf, png = save_figure(fig, self.dir / name)
        if self.embed:
            src = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
        else:
            src = f"figures/{png.name}"
        width = round(_png_width(png) * 96 / PAPER_RC["savefig.dpi"])
        return (f'<figure style="width:{width}px"><img src="{src}" width="{width}" alt="{html.escape(caption)}">'
                f'<figcaption>{html.escape(caption)} (<a href="figures/{pdf.name}">PDF</a>)</figcaption></figure>')


def listing(names) -> str:
    """'a', 'a and b', 'a, b and c'."""
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


_SOLVED = {"exact": "exactly on the enumerated tables",
           "snis": "by self-normalised importance sampling (achieved means are held-out estimates with their SE)"}


def control_section(control: dict | None) -> str:
    """What chose the target (``bayes_rlhf.control.control_summary``): lambda and the achieved moments of
    a moment target, or the beta a KL / reward budget chose; '' for a plain target."""
    if not control:
        return ""
    n = control.get("num_prompts", 1)
    if control.get("kind") == "budget":
        name = "KL(π* ‖ π₀)" if control["budget"] == "kl" else "E_π*[r]"
        lo, hi = control["reachable"]
        return (f"<h2>Budget</h2><p>β = {fmt(control['beta'])} was chosen ({html.escape(control['method'])}) so that "
                f"{name}, averaged over the {n} prompt(s), is {fmt(control['value'])}; at this β it is "
                f"{fmt(control['kl_to_prior'] if control['budget'] == 'kl' else control['mean_reward'])} "
                f"(any budget in ({fmt(lo)}, {fmt(hi)}) is reachable).</p>")
    rows = [{"feature": f, "λ": lam, "target mean": m, "achieved mean": a, "SE": se, "reachable": f"({lo:.4g}, {hi:.4g})"}
            for f, lam, m, a, se, (lo, hi) in zip(control["features"], control["coefficients"], control["moments"],
                                                   control["achieved"], control["standard_error"], control["reachable"])]
    if control["method"] == "exact":  # exact to the solver's tolerance: no standard error
        rows = [{k: v for k, v in r.items() if k != "SE"} for r in rows]
    constraint = control.get("constraint")
    return ("<h2>Distributional control</h2><p>The target is the I-projection π* ∝ π₀ exp(λ · φ) (β = 1"
            + (f", restricted to the constraint {html.escape(constraint)}" if constraint else "")
            + f"): the distribution closest to π₀ whose feature means, averaged over the {n} prompt(s), are the "
            f"targets below, solved {_SOLVED.get(control['method'], html.escape(control['method']))}; KL(π* ‖ π₀) averaged over the prompts is {fmt(control['kl_to_prior'])} nats. "
            "The rewards shown below are λ · φ.</p>" + table(rows))

