"""Figures about distances to pi*: the reward-KL frontier, log Z against particles, importance
weight diagnostics, and KL to pi* over training. Data in, ``Figure`` out; nothing is estimated here.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from bayes_rlhf.errors import ConfigError
from bayes_rlhf.plots.style import COLORS, CYCLE, new_figure, paper_style


def _arr(x, name: str) -> np.ndarray:
    a = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=float)
    if a.size == 0:
        raise ConfigError(f"{name} is empty: nothing to plot")
    return a


@paper_style
def plot_frontier(points: Sequence, title: str | None = None) -> Figure:
    """E[r] against KL(q || pi0) for ``FrontierPoint``-like objects (label, kind, kl, reward).

    Posterior points (kind 'posterior') are joined into the exact frontier; best-of-N exact
    points and their analytic bounds are joined by dotted lines; policies and samplers are
    labelled markers.
    """
    if not points:
        raise ConfigError("no frontier points to plot")
    fig, (ax,) = new_figure(width=5.6, height=4.0)
    post = sorted((p for p in points if p.kind == "posterior"), key=lambda p: p.kl)
    if post:
        ax.plot([p.kl for p in post], [p.reward for p in post], "-", color=COLORS["posterior"],
                label="exact posterior $\\pi^*_\\beta$", zorder=2)
    bon = sorted((p for p in points if p.kind == "best_of_n"), key=lambda p: p.n)
    bnd = sorted((p for p in points if p.kind == "best_of_n_bound"), key=lambda p: p.n)
    if bon:
        ax.plot([p.kl for p in bon], [p.reward for p in bon], "o-", color=COLORS["best_of_n"],
                label="best-of-N (exact)", zorder=3)
    if bnd:
        ax.plot([p.kl for p in bnd], [p.reward for p in bnd], "o--", mfc="none", color=COLORS["best_of_n"],
                label="best-of-N (KL bound $\\log N - (N-1)/N$)", zorder=3)
    others = [p for p in points if p.kind not in ("posterior", "best_of_n", "best_of_n_bound")]
    for i, p in enumerate(others):
        marker = "*" if p.kind == "policy" else "X"
        ax.plot([p.kl], [p.reward], marker, ms=12, color=CYCLE[i % len(CYCLE)], label=p.label, zorder=4)
    ax.set_xlabel("KL(q || $\\pi_0$) [nats]")
    ax.set_ylabel("expected reward E$_q$[r]")
    ax.set_title(title or "Reward-KL frontier")
    ax.legend(loc="lower right")
    return fig


@paper_style
def plot_log_z(num_particles: Sequence[int], estimates: Mapping[str, Sequence[float]],
               stderrs: Mapping[str, Sequence[float]] | None = None, exact_log_z: float | None = None,
               title: str | None = None) -> Figure:
    """log Z estimates and bounds against the number of particles (log x-axis).

    Parameters
    ----------
    num_particles : [m]
    estimates : {label: [m] or [m, repeats]}
        Estimates or bounds per particle count; repeated runs are drawn as points.
    stderrs : {label: [m]}, optional
        Error bars (e.g. 2 standard errors) for 1-d series.
    exact_log_z : float, optional
        Drawn as a horizontal reference line.
    """
    n = _arr(num_particles, "num_particles")
    if not estimates:
        raise ConfigError("no log Z estimates to plot")
    fig, (ax,) = new_figure()
    m = len(estimates)
    for i, (label, vals) in enumerate(estimates.items()):
        v = _arr(vals, label)
        c = CYCLE[i % len(CYCLE)]
        x = n * 1.06 ** (i - (m - 1) / 2)  # series side by side on the log axis
        if v.ndim == 2:
            for j in range(v.shape[1]):
                ax.plot(x, v[:, j], "o", color=c, alpha=0.5, ms=3, label=label if j == 0 else None)
            continue
        err = None if not stderrs or label not in stderrs else _arr(stderrs[label], label)
        ax.errorbar(x, v, yerr=err, fmt="o-", color=c, capsize=3, label=label)
    if exact_log_z is not None:
        ax.axhline(exact_log_z, color="k", ls="--", lw=1.2, label="exact log Z")
    ax.set_xscale("log")
    ax.set_xlabel("number of particles")
    ax.set_ylabel("log Z [nats]")
    ax.set_title(title or "log Z estimates and bounds")
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5))
    return fig


@paper_style
def plot_weight_diagnostics(labels: Sequence[str], ess_fraction: Sequence[float], khat: Sequence[float],
                            title: str | None = None) -> Figure:
    """Kish ESS / n and PSIS k-hat per proposal, with the k-hat thresholds 0.5, 0.7 and 1."""
    e, k = _arr(ess_fraction, "ess_fraction"), _arr(khat, "khat")
    if not (len(labels) == len(e) == len(k)):
        raise ConfigError("labels, ess_fraction and khat must have the same length")
    fig, (a1, a2) = new_figure(ncols=2, width=4.2)
    x = np.arange(len(labels))
    a1.bar(x, e, color=COLORS["posterior"])
    a1.set_ylim(0, 1.05)
    a1.set_ylabel("Kish ESS / n")
    shown = np.where(np.isnan(k), 0.0, np.clip(k, -1.0, 1.2))  # k < -1 (bounded weights) drawn at -1
    a2.bar(x, shown, color=[_khat_colour(v) for v in k])
    for i in np.flatnonzero(np.isnan(k)):
        a2.text(x[i], 0.02, "n/a", ha="center", va="bottom", fontsize=8, color="#555555")
    for t, ls in ((0.5, ":"), (0.7, "--"), (1.0, "-")):
        a2.axhline(t, color="k", ls=ls, lw=1, label=f"k = {t}")
    a2.set_ylabel("PSIS $\\hat k$")
    a2.legend(loc="upper left")
    for ax in (a1, a2):
        ax.set_xticks(x, list(labels), rotation=20, ha="right")
    fig.suptitle(title or "Importance weight diagnostics")
    return fig


def _khat_colour(k: float) -> str:
    if np.isnan(k):
        return "#bbbbbb"
    return "#2ca02c" if k < 0.5 else "#ffbf00" if k < 0.7 else "#d62728"


@paper_style
def plot_training(steps: Sequence[float], series: Mapping[str, Sequence[float]],
                  references: Mapping[str, float] | None = None, ylabel: str = "KL(q || $\\pi^*$) [nats]",
                  log_y: bool = False, title: str | None = None) -> Figure:
    """Curves over training steps (e.g. exact or estimated KL to pi*), with reference lines."""
    s = _arr(steps, "steps")
    if not series:
        raise ConfigError("no training series to plot")
    fig, (ax,) = new_figure()
    for i, (label, vals) in enumerate(series.items()):
        v = _arr(vals, label)
        if v.shape != s.shape:
            raise ConfigError(f"series {label!r} has {v.size} values for {s.size} steps")
        shown = np.isfinite(v)  # series evaluated every k steps are NaN in between: join their points
        sparse = shown.sum() < 0.5 * shown.size
        ax.plot(s[shown], v[shown], "o-" if sparse else "-", ms=4, color=CYCLE[i % len(CYCLE)], label=label)
    for label, val in (references or {}).items():
        ax.axhline(val, color="k", ls="--", lw=1.2, label=label)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(title or "Distance to the posterior during training")
    ax.legend()
    return fig
