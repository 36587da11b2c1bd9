"""Paper style for every figure, and ``save_figure`` (vector PDF and PNG).

Figures are ``matplotlib.figure.Figure`` objects drawn on the Agg canvas: no pyplot state, no
display needed, safe in threads and on headless machines.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bayes_rlhf.errors import ConfigError

PAPER_RC = {
    "font.size": 11, "axes.titlesize": 12, "axes.labelsize": 12, "legend.fontsize": 9,
    "xtick.labelsize": 10, "ytick.labelsize": 10, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.alpha": 0.3, "lines.linewidth": 1.8, "lines.markersize": 6,
    "savefig.bbox": "tight", "savefig.dpi": 150, "pdf.fonttype": 42, "ps.fonttype": 42,
}

#: Colours by role, used consistently across figures.
COLORS = {"prior": "#7f7f7f", "posterior": "#1f77b4", "policy": "#d62728", "best_of_n": "#2ca02c",
          "best_of_n_bound": "#2ca02c", "sampler": "#9467bd", "bound": "#ff7f0e"}
CYCLE = ("#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#ff7f0e")
#: Roles recognised from the first word of a series label ("prior π0", "exact posterior π*", ...).
_ROLE_WORDS = {"prior": "prior", "posterior": "posterior", "exact": "posterior", "pi*": "posterior",
               "π*": "posterior"}


def colour_for(label: str, index: int) -> str:
    """The role colour of ``label`` (a prior or posterior series), else ``CYCLE[index]``.

    Give ``index`` as the position of the series among the non-role series, so that the same
    policy gets the same colour in every figure of a report.
    """
    words = str(label).lower().split()
    role = _ROLE_WORDS.get(words[0]) if words else None
    return COLORS[role] if role else CYCLE[index % len(CYCLE)]


def is_role(label: str) -> bool:
    """True when ``colour_for`` gives ``label`` a role colour (prior or posterior)."""
    words = str(label).lower().split()
    return bool(words) and words[0] in _ROLE_WORDS


def paper_style(fn):
    """Decorator: build the figure under ``PAPER_RC``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(PAPER_RC):
            return fn(*args, **kwargs)

    return wrapper


def new_figure(ncols: int = 1, width: float = 5.0, height: float = 3.6) -> tuple[Figure, list]:
    """A Figure on the Agg canvas with ``ncols`` axes side by side."""
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def save_figure(fig: Figure, path_stem: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``<path_stem>.pdf`` (vector) and ``<path_stem>.png``; returns both paths.

    Each file is written to a temporary name and renamed, so readers never see half a file.
    """
    if not isinstance(fig, Figure):
        raise ConfigError(f"save_figure takes a matplotlib Figure, got {type(fig).__name__}")
    stem = Path(path_stem)
    if stem.suffix in (".pdf", ".png"):
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    with matplotlib.rc_context(PAPER_RC):
        for ext in ("pdf", "png"):
            final = stem.with_name(f"{stem.name}.{ext}")
            tmp = stem.with_name(f".{stem.name}.{os.getpid()}.tmp.{ext}")
            fig.savefig(tmp, format=ext)
            os.replace(tmp, final)
            paths.append(final)
    return paths[0], paths[1]


def _arr(x, name: str) -> np.ndarray:
    a = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=float)
    if a.size == 0:
        raise ConfigError(f"{name} is empty: nothing to plot")
    return a
