"""The reward-KL frontier: E_q[r] against KL(q || pi0) for the exact posterior family and the
points of policies, samplers and best-of-N. Data in, ``Figure`` out.

Layout::

    +------------------------------+--------------------+
    | main axes: limits chosen     | overview: the      |
    | from the markers (zoomed     | whole curve, the   |
    | when the curve runs far      | zoomed box dashed  |
    | beyond them)                 +--------------------+
    |                              | legend             |
    +------------------------------+--------------------+

The limits of the main axes come from what is marked (policies, samplers, best-of-N, the
run's pi*), so no marker sits in a corner of an axis that the curve stretched to 30 nats.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from bayes_rlhf.errors import ConfigError
from bayes_rlhf.plots.style import COLORS, CYCLE, paper_style

#: Marker kinds besides the curve ('posterior') and best-of-N: how each is drawn.
MARKER_KINDS = ("target", "prior", "policy", "sampler")
_SAMPLER_MARKERS = ("D", "s", "^", "v", "P", "h", "<", ">")
_POLICY_MARKERS = ("*", "P", "X", "D")  # policies: filled stars, then (past the colours) other filled shapes
_SAMPLER_COLOURS = ("#9467bd", "#17becf", "#8c564b", "#e377c2", "#bcbd22", "#ff7f0e")


def _finite(p) -> bool:
    return math.isfinite(p.kl) and math.isfinite(p.reward)


def _marker_style(p, i_policy: int, i_sampler: int) -> dict:
    """Matplotlib keywords for one marker; hollow shapes stay visible where markers overlap."""
    if p.kind == "target":  # pi* at the run's beta: a ring drawn on top, a policy at pi* shows inside it
        return dict(marker="o", ms=15, mfc="none", mec="k", mew=1.8, ls="none", zorder=7)
    if p.kind == "prior":
        return dict(marker="s", ms=8, color=COLORS["prior"], mec="k", mew=0.6, ls="none", zorder=5)
    if p.kind == "policy":
        # past the colour cycle the shape changes too, so no two policies look alike
        shape = _POLICY_MARKERS[(i_policy // len(CYCLE)) % len(_POLICY_MARKERS)]
        return dict(marker=shape, ms=13 if shape == "*" else 10, color=CYCLE[i_policy % len(CYCLE)], mec="k", mew=0.6,
                    ls="none", zorder=6)
    return dict(marker=_SAMPLER_MARKERS[i_sampler % len(_SAMPLER_MARKERS)], ms=9, mfc="none",
                mec=_SAMPLER_COLOURS[i_sampler % len(_SAMPLER_COLOURS)], mew=2.0, ls="none", zorder=5)


def _draw(ax, curve, bon, bnd, others, labels: bool) -> None:
    lab = (lambda s: s) if labels else (lambda s: None)
    if curve:
        ax.plot([p.kl for p in curve], [p.reward for p in curve], "-", color=COLORS["posterior"],
                label=lab("exact posterior $\\pi^*_\\beta$ (all $\\beta$)"), zorder=2)
    if bon:
        ax.plot([p.kl for p in bon], [p.reward for p in bon], "o-", ms=5, color=COLORS["best_of_n"],
                label=lab("best-of-N, exact (N = " + ", ".join(str(p.n) for p in bon) + ")"), zorder=3)
    if bnd:
        ax.plot([p.kl for p in bnd], [p.reward for p in bnd], "o--", ms=5, mfc="none", color=COLORS["best_of_n"],
                label=lab("best-of-N, KL bound $\\log N - (N-1)/N$"), zorder=3)
    i_pol = i_smp = 0
    for p in others:
        style = _marker_style(p, i_pol, i_smp)
        i_pol += p.kind == "policy"
        i_smp += p.kind not in ("policy", "prior", "target")
        ax.plot([p.kl], [p.reward], label=lab(p.label), **style)


def _zoom_box(curve, marked) -> tuple[float, float, float, float]:
    """(x0, x1, y0, y1) holding every marked point and the curve up to their largest KL."""
    x1 = max(1.3 * max(p.kl for p in marked), 0.05)
    x0 = min(0.0, min(p.kl for p in marked)) - 0.04 * x1
    ys = [p.reward for p in marked] + [p.reward for p in curve if p.kl <= x1]
    if curve:
        ks, rs = np.array([p.kl for p in curve]), np.array([p.reward for p in curve])
        ys.append(float(np.interp(x1, ks, rs)))  # where the curve leaves the box
    lo, hi = min(ys), max(ys)
    pad = 0.08 * (hi - lo) if hi > lo else 0.1 * max(abs(hi), 1.0)
    return x0, x1, lo - pad, hi + pad


@paper_style
def plot_frontier(points: Sequence, title: str | None = None, zoom: bool | None = None) -> Figure:
    """E[r] against KL(q || pi0) for ``FrontierPoint``-like objects (label, kind, kl, reward, n).

    Kinds: 'posterior' points are joined into the exact frontier; 'best_of_n' (exact) and
    'best_of_n_bound' (analytic KL bound) are joined by lines; 'target' (pi* at the run's beta) is
    a black ring drawn on top; 'prior' a grey square; 'policy' filled stars; any other kind
    (samplers) hollow markers of distinct shapes. Points with an infinite coordinate are left out.

    Parameters
    ----------
    zoom : bool, optional
        Limit the main axes to the marked points and add an overview of the whole curve. Default:
        when the curve reaches more than three times the largest marked KL.
    """
    if not points:
        raise ConfigError("no frontier points to plot")
    pts = [p for p in points if _finite(p)]
    if not pts:
        raise ConfigError("every frontier point has an infinite KL or reward: nothing to plot")
    curve = sorted((p for p in pts if p.kind == "posterior"), key=lambda p: p.kl)
    bon = sorted((p for p in pts if p.kind == "best_of_n"), key=lambda p: p.n)
    bnd = sorted((p for p in pts if p.kind == "best_of_n_bound"), key=lambda p: p.n)
    others = [p for p in pts if p.kind not in ("posterior", "best_of_n", "best_of_n_bound")]
    marked = bon + bnd + others
    if zoom is None:
        zoom = bool(curve and marked) and curve[-1].kl > 3 * max(max(p.kl for p in marked), 0.05)
    zoom = zoom and bool(marked)
    fig = Figure(figsize=(8.4, 4.3), layout="constrained")
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(2, 2, width_ratios=[1.75, 1], height_ratios=[1, 1.15])
    ax = fig.add_subplot(gs[:, 0])
    _draw(ax, curve, bon, bnd, others, labels=True)
    if zoom:
        x0, x1, y0, y1 = _zoom_box(curve, marked)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ov = fig.add_subplot(gs[0, 1])
        _draw(ov, curve, bon, bnd, others, labels=False)
        for line in ov.lines:
            line.set_markersize(min(line.get_markersize(), 6))
        ov.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ls="--", lw=1, ec="k", zorder=8))
        ov.set_title("whole frontier (dashed: left panel)", fontsize=9)
        ov.tick_params(labelsize=8)
        ov.set_xlabel("KL(q || $\\pi_0$) [nats]", fontsize=9)
    ax.set_xlabel("KL(q || $\\pi_0$) [nats]")
    ax.set_ylabel("expected reward E$_q$[r]")
    ax.set_title(title or "Reward-KL frontier")
    leg_ax = fig.add_subplot(gs[1, 1] if zoom else gs[:, 1])
    leg_ax.axis("off")
    handles, labels = ax.get_legend_handles_labels()
    leg_ax.legend(handles, labels, loc="upper left" if zoom else "center left", frameon=False,
                  fontsize=8.5, borderaxespad=0)
    return fig
