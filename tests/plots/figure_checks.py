"""Checks a reader would make of any figure: every marker inside its axes, human legend entries,
tick labels that do not collide, and text in the PDF that is text."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

_SNAKE = re.compile(r"\b[A-Za-z]+_[A-Za-z]+\b")  # a column name such as kl_prior
_MATH = re.compile(r"\$[^$]*\$")


def axis_labels(fig: Figure) -> str:
    """Every axis label of the figure, x then y per axes, in one string."""
    return " ".join(ax.get_xlabel() + " " + ax.get_ylabel() for ax in fig.axes)


def drawn_axes(fig: Figure):
    return [ax for ax in fig.axes if ax.axison]


def assert_inside_limits(fig: Figure) -> int:
    """Every marker (a point of a line drawn with markers) and every bar lies inside its axes'
    limits; returns how many were checked. Plain lines may run out of a zoomed frame."""
    fig.canvas.draw()
    count = 0
    for ax in drawn_axes(fig):
        (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
        pts = []
        for line in ax.lines:
            if line.get_transform() != ax.transData:  # axhline / axvline: one coordinate in axes units
                continue
            if line.get_marker() in (None, "None", "none", "", " "):
                continue
            pts.append(np.asarray(line.get_xydata(), dtype=float))
        for patch in ax.patches:  # bars, step histograms, the frontier's zoom box: corners in data units
            if patch.get_transform() == patch.get_patch_transform() + ax.transData:
                pts.append(patch.get_path().transformed(patch.get_patch_transform()).vertices)
        for xy in pts:
            xy = xy[np.isfinite(xy).all(axis=1)]
            count += len(xy)
            tol = 1e-9 * max(1.0, x1 - x0, y1 - y0)
            assert ((xy[:, 0] >= x0 - tol) & (xy[:, 0] <= x1 + tol)).all(), (ax.get_title(), xy, (x0, x1))
            assert ((xy[:, 1] >= y0 - tol) & (xy[:, 1] <= y1 + tol)).all(), (ax.get_title(), xy, (y0, y1))
    return count


def legend_texts(fig: Figure) -> list[str]:
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + list(fig.legends)
    return [t.get_text() for leg in legends for t in leg.get_texts()]


def assert_human_legend(fig: Figure) -> list[str]:
    texts = legend_texts(fig)
    assert texts, "the figure has no legend"
    for t in texts:
        assert not _SNAKE.search(_MATH.sub("", t)), f"legend entry {t!r} looks like a column name"
    return texts


def assert_ticks_apart(fig: Figure) -> None:
    """No two tick labels of one axis overlap on the rendered canvas."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in drawn_axes(fig):
        for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
            boxes = [t.get_window_extent(renderer) for t in labels if t.get_visible() and t.get_text()]
            for i, a in enumerate(boxes):
                for b in boxes[i + 1:]:
                    assert not a.overlaps(b), f"tick labels overlap in {ax.get_title()!r}"


def pdf_text(pdf: Path) -> str | None:
    """The text ``pdftotext`` reads in a PDF; None when poppler-utils is not installed."""
    tool = shutil.which("pdftotext")
    if tool is None:
        return None
    return subprocess.run([tool, str(pdf), "-"], capture_output=True, text=True, check=True).stdout


def assert_pdf_text(pdf: Path, strings) -> bool:
    """Fonts of a PDF figure are embedded TrueType (pdf.fonttype 42), never Type 3 outlines, and
    ``pdftotext`` finds each of ``strings`` in it; False when pdftotext is not installed."""
    data = pdf.read_bytes()
    assert b"/FontFile2" in data and b"/Type3" not in data
    text = pdf_text(pdf)
    if text is None:  # poppler-utils absent: only the font check ran
        return False
    text = "".join(text.split())
    for s in strings:  # compared without white space: pdftotext splits words where glyphs are spaced
        assert "".join(s.split()) in text, f"{s!r} is not text in {pdf.name}: {text[:300]!r}"
    return True
