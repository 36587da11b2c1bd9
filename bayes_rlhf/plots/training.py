"""Curves over training steps: exact and estimated KL to pi*, the objective, the reward, one
panel per kind so exact and noisy series are not mixed. Data in, ``Figure`` out.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from bayes_rlhf.errors import ConfigError
from bayes_rlhf.plots.style import CYCLE, _arr, new_figure, paper_style


def _draw_series(ax, s: np.ndarray, series: Mapping[str, Sequence[float]], first_colour: int = 0) -> None:
    for i, (label, vals) in enumerate(series.items()):
        v = _arr(vals, label)
        if v.shape != s.shape:
            raise ConfigError(f"series {label!r} has {v.size} values for {s.size} steps")
        shown = np.isfinite(v)  # series evaluated every k steps are NaN in between: join their points
        sparse = shown.sum() < 0.5 * shown.size
        ax.plot(s[shown], v[shown], "o-" if sparse else "-", ms=4, color=CYCLE[(first_colour + i) % len(CYCLE)],
                label=label, lw=1.8 if sparse else 1.2)


@paper_style
def plot_training_panels(steps: Sequence[float], panels: Sequence[tuple], title: str | None = None) -> Figure:
    """One axes per panel of curves over training steps, so exact and noisy series are not mixed.

    Parameters
    ----------
    steps : [m]
    panels : sequence of (title, ylabel, {label: [m]})
        Series given NaN where not evaluated are drawn through their evaluated points.
    """
    s = _arr(steps, "steps")
    panels = [p for p in panels if p[2]]
    if not panels:
        raise ConfigError("no training series to plot")
    fig, axes = new_figure(ncols=len(panels), width=4.0, height=3.3)
    colour = 0
    for ax, (name, ylabel, series) in zip(axes, panels):
        _draw_series(ax, s, series, colour)
        colour += len(series)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


@paper_style
def plot_training(steps: Sequence[float], series: Mapping[str, Sequence[float]],
                  references: Mapping[str, float] | None = None, ylabel: str = "KL(q || $\\pi^*$) [nats]",
                  log_y: bool = False, title: str | None = None) -> Figure:
    """Curves over training steps (e.g. exact or estimated KL to pi*), with reference lines."""
    s = _arr(steps, "steps")
    if not series:
        raise ConfigError("no training series to plot")
    fig, (ax,) = new_figure()
    _draw_series(ax, s, series)
    for label, val in (references or {}).items():
        ax.axhline(val, color="k", ls="--", lw=1.2, label=label)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(title or "Distance to the posterior during training")
    ax.legend()
    return fig
