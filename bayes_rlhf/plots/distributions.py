"""Figures of distributions: the exact next-token posterior against a policy's next-token
distribution after a prefix, and reward histograms under prior, posterior and policies.
Data in, ``Figure`` out.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from bayes_rlhf.errors import ConfigError
from bayes_rlhf.plots.divergence import _arr
from bayes_rlhf.plots.style import COLORS, CYCLE, new_figure, paper_style


@paper_style
def plot_token_distributions(tokens: Sequence[str], distributions: Mapping[str, Sequence[float]],
                             prefix: str = "", top: int | None = 12, title: str | None = None) -> Figure:
    """Grouped bars of next-token probabilities after ``prefix``.

    Parameters
    ----------
    tokens : [V]
        Token strings, one per vocabulary id.
    distributions : {label: [V]}
        Probabilities, e.g. {"prior": ..., "posterior": ..., "policy": ...}. The first
        distribution orders the tokens; the ``top`` most probable under it are shown.
    """
    if not distributions:
        raise ConfigError("no distributions to plot")
    probs = {k: _arr(v, k) for k, v in distributions.items()}
    V = len(tokens)
    if any(p.shape != (V,) for p in probs.values()):
        raise ConfigError(f"every distribution must have one probability per token ({V})")
    order = np.argsort(-next(iter(probs.values())), kind="stable")[: top or V]
    fig, (ax,) = new_figure(width=max(5.0, 0.45 * len(order) + 1.5))
    width = 0.8 / len(probs)
    x = np.arange(len(order))
    for i, (label, p) in enumerate(probs.items()):
        color = COLORS.get(label, CYCLE[i % len(CYCLE)])
        ax.bar(x + (i - (len(probs) - 1) / 2) * width, p[order], width, label=label, color=color)
    ax.set_xticks(x, [tokens[j] for j in order], rotation=45, ha="right")
    ax.set_ylabel("next-token probability")
    ax.set_xlabel("next token")
    ax.set_title(title or f"Next token after '{prefix}'" if prefix else title or "First token")
    ax.legend()
    return fig


@paper_style
def plot_reward_histograms(series: Mapping[str, tuple], bins: int | Sequence[float] | None = None,
                           title: str | None = None) -> Figure:
    """Reward distributions as step histograms (probability per bin).

    Parameters
    ----------
    series : {label: (values [n], weights [n] or None)}
        Rewards and their probabilities (exact tables) or None (equally weighted draws).
    bins : int or edges, optional
        Default: unit-width bins centred on integers when every value is an integer, else 30.
    """
    if not series:
        raise ConfigError("no reward series to plot")
    data = {}
    for label, (vals, w) in series.items():
        v = _arr(vals, label)
        ww = np.ones_like(v) if w is None else _arr(w, label)
        keep = np.isfinite(v)
        data[label] = (v[keep], ww[keep] / ww[keep].sum())
    allv = np.concatenate([v for v, _ in data.values()])
    if bins is None:
        if np.allclose(allv, np.round(allv)):
            bins = np.arange(allv.min() - 0.5, allv.max() + 1.5)
        else:
            bins = 30
    fig, (ax,) = new_figure()
    for i, (label, (v, w)) in enumerate(data.items()):
        color = COLORS.get(label, CYCLE[i % len(CYCLE)])
        ax.hist(v, bins=bins, weights=w, histtype="step", lw=2, color=color, label=label)
    ax.set_xlabel("reward r(x)")
    ax.set_ylabel("probability")
    ax.set_title(title or "Reward distribution")
    ax.legend()
    return fig
