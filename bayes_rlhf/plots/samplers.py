"""Figures of samplers: log Z estimates and bounds against the number of particles, and the
importance-weight diagnostics (Kish ESS / n, PSIS k-hat) of each proposal. The reward-KL frontier
is in ``plots.frontier``. Data in, ``Figure`` out; nothing is estimated here.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from bayes_rlhf.errors import ConfigError
from bayes_rlhf.plots.style import COLORS, CYCLE, _arr, new_figure, paper_style


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
    fig, (ax,) = new_figure(width=6.2)
    m = len(estimates)
    for i, (label, vals) in enumerate(estimates.items()):
        v = _arr(vals, label)
        c = CYCLE[i % len(CYCLE)]
        x = n * 1.1 ** (i - (m - 1) / 2)  # series side by side on the log axis
        if v.ndim == 2:
            for j in range(v.shape[1]):
                ax.plot(x, v[:, j], "o", color=c, alpha=0.55, ms=4, label=label if j == 0 else None)
            continue
        err = None if not stderrs or label not in stderrs else _arr(stderrs[label], label)
        ax.errorbar(x, v, yerr=err, fmt="o-", color=c, capsize=3, label=label)
    if exact_log_z is not None:
        ax.axhline(exact_log_z, color="k", ls="--", lw=1.2, label="exact log Z")
    ax.set_xscale("log")
    ax.set_xticks(n, [f"{int(v)}" if float(v).is_integer() else f"{v:g}" for v in n])
    ax.minorticks_off()
    ax.set_xlabel("number of particles")
    ax.set_ylabel("log Z [nats]")
    ax.set_title(title or "log Z estimates and bounds")
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5))
    return fig


@paper_style
def plot_weight_diagnostics(labels: Sequence[str], ess_fraction: Sequence[float], khat: Sequence[float],
                            title: str | None = None) -> Figure:
    """Kish ESS / n and PSIS k-hat per proposal (horizontal bars), with the k-hat thresholds.

    A k-hat below -1 (bounded weights; -inf when every weight is equal) is drawn as a hatched
    bar cut at -1 with its value written beside it; NaN is marked 'n/a'. The k-hat axis extends
    to the largest value, so no bar is cut above.
    """
    e, k = _arr(ess_fraction, "ess_fraction"), _arr(khat, "khat")
    if not (len(labels) == len(e) == len(k)):
        raise ConfigError("labels, ess_fraction and khat must have the same length")
    fig, (a1, a2) = new_figure(ncols=2, width=4.0, height=max(2.4, 1.1 + 0.32 * len(labels)))
    y = np.arange(len(labels))
    a1.barh(y, e, color=COLORS["posterior"])
    a1.set_xlim(0, 1.02)
    a1.set_xlabel("Kish ESS / n")
    cut = ~np.isnan(k) & (k < -1.0)
    shown = np.where(np.isnan(k), 0.0, np.maximum(k, -1.0))
    bars = a2.barh(y, shown, color=[_khat_colour(v) for v in k])
    for i in np.flatnonzero(cut):
        bars[i].set_alpha(0.35)
        value = "−∞" if np.isneginf(k[i]) else f"{k[i]:.2f}".replace("-", "−")
        a2.text(-0.5, y[i], f"$\\hat k$ = {value}", va="center", ha="center", fontsize=8)
    for i in np.flatnonzero(np.isnan(k)):
        a2.text(0.04, y[i], "n/a", va="center", ha="left", fontsize=8, color="#555555")
    for t, ls in ((0.5, ":"), (0.7, "--"), (1.0, "-")):
        a2.axvline(t, color="k", ls=ls, lw=1, label=f"$\\hat k$ = {t}")
    finite = k[np.isfinite(k)]
    a2.set_xlim(-1.05, max(1.3, float(finite.max()) + 0.1 if finite.size else 1.3))
    a2.set_xlabel("PSIS $\\hat k$ (pale: below −1, cut)" if cut.any() else "PSIS $\\hat k$")
    a2.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    a1.set_yticks(y, list(labels))
    a2.set_yticks(y, [""] * len(labels))
    for ax in (a1, a2):
        ax.set_ylim(len(labels) - 0.5, -0.5)  # first label on top
        ax.grid(axis="y", visible=False)
    fig.suptitle(title or "Importance weight diagnostics")
    return fig


def _khat_colour(k: float) -> str:
    if np.isnan(k):
        return "#bbbbbb"
    return "#2ca02c" if k < 0.5 else "#ffbf00" if k < 0.7 else "#d62728"
