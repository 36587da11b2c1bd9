"""Figures of distributions: next-token probabilities after a prefix (prior, posterior,
policies) and reward distributions. Data in, ``Figure`` out.

Token labels are made readable for any tokenizer by ``token_label``: byte-level BPE pieces
('Ġa') are decoded to their text with spaces shown as '␣' ('␣a'); a piece holding part of a
multi-byte character shows that byte in hex ('fÃ' reads 'f<0xC3>'); special tokens keep their names.
"""

from __future__ import annotations

from collections.abc import Sequence as SequenceABC
from functools import lru_cache
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from bayes_rlhf.errors import ConfigError
from bayes_rlhf.plots.style import _arr, colour_for, is_role, new_figure, paper_style

_VISIBLE = str.maketrans({" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"})
_SPACE_MARKS = ("▁", "Ġ")  # SentencePiece and byte-level BPE word-initial markers


def visible_text(text: str) -> str:
    """``text`` with spaces, newlines and tabs shown as '␣', '↵' and '⇥' (and '' as '∅')."""
    return text.translate(_VISIBLE) if text else "∅"


@lru_cache(maxsize=1)
def _byte_of_char() -> dict[str, int]:
    """Inverse of the byte-level BPE alphabet: printable bytes stand for themselves, the others
    for characters from U+0100 on, in byte order."""
    keep = set(range(33, 127)) | set(range(161, 173)) | set(range(174, 256))
    table, shifted = {}, 0
    for b in range(256):
        if b in keep:
            table[chr(b)] = b
        else:
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


def _show_byte(b: int) -> str:
    return "␣" if b == 0x20 else chr(b) if 0x20 < b < 0x7F else f"<0x{b:02X}>"


def token_label(tokenizer, token_id: int) -> str:
    """Readable text of one token id (see the module docstring)."""
    token_id = int(token_id)
    piece = str(tokenizer.convert_ids_to_tokens(token_id))
    if token_id in set(tokenizer.all_special_ids):
        return piece
    text = tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if "\ufffd" in text or not text:  # part of a multi-byte character: show its bytes
        table = _byte_of_char()
        if piece and all(c in table for c in piece):
            return "".join(_show_byte(table[c]) for c in piece)
        return piece
    if piece.startswith(_SPACE_MARKS) and not text.startswith(" "):
        text = " " + text  # decoders drop the space of a sequence's first word
    return visible_text(text)


class TokenLabels(SequenceABC):
    """``token_label`` of every id of a vocabulary, made on first use (plots show a dozen)."""

    def __init__(self, tokenizer, vocab_size: int):
        self.tokenizer, self.vocab_size, self._cache = tokenizer, int(vocab_size), {}

    def __len__(self) -> int:
        return self.vocab_size

    def __getitem__(self, i):
        i = int(i)
        if not 0 <= i < self.vocab_size:
            raise IndexError(i)
        if i not in self._cache:
            self._cache[i] = token_label(self.tokenizer, i)
        return self._cache[i]


def _colours(labels) -> list[str]:
    out, k = [], 0
    for label in labels:
        out.append(colour_for(label, k))
        k += not is_role(label)
    return out


def _shown_tokens(P: np.ndarray, top: int | None, min_prob: float) -> np.ndarray:
    """Ids to draw: probability >= min_prob under some distribution, at most ``top`` of them
    (largest peak first), ordered by the first distribution."""
    peak = P.max(0)
    ids = np.flatnonzero(peak >= min_prob)
    if top and ids.size > top:
        ids = ids[np.argsort(-peak[ids], kind="stable")[:top]]
    return ids[np.lexsort((-peak[ids], -P[0, ids]))]


@paper_style
def plot_token_distributions(tokens: Sequence[str], distributions: Mapping[str, Sequence[float]],
                             prefix: str = "", top: int | None = 12, title: str | None = None,
                             min_prob: float = 0.005) -> Figure:
    """Grouped bars of next-token probabilities after ``prefix``.

    Tokens with probability below ``min_prob`` under every distribution, and those beyond the
    ``top`` most probable, are pooled into one hatched 'other' bar per distribution (left out
    when that bar is below ``min_prob`` everywhere).

    Parameters
    ----------
    tokens : [V]
        Readable token labels, one per vocabulary id (e.g. ``TokenLabels(tokenizer, V)``).
    distributions : {label: [V]}
        Probabilities, e.g. {"exact posterior π*": ..., "prior π0": ..., "policy": ...}. The
        first orders the bars.
    prefix : str
        Shown text of the prefix; '' means the first token of the completion.
    """
    if not distributions:
        raise ConfigError("no distributions to plot")
    probs = {k: _arr(v, k) for k, v in distributions.items()}
    V = len(tokens)
    if any(p.shape != (V,) for p in probs.values()):
        raise ConfigError(f"every distribution must have one probability per token ({V})")
    P = np.stack(list(probs.values()))
    ids = _shown_tokens(P, top, min_prob)
    rest = np.ones(V, dtype=bool)
    rest[ids] = False
    other = P[:, rest].sum(1)
    with_other = bool(rest.any()) and float(other.max()) >= min_prob
    labels = [tokens[j] for j in ids] + ([f"other ({int(rest.sum())})"] if with_other else [])
    fig, (ax,) = new_figure(width=max(5.0, 0.5 * len(labels) + 3.2))
    width = 0.8 / len(probs)
    x = np.arange(len(labels))
    for i, ((label, p), colour) in enumerate(zip(probs.items(), _colours(probs))):
        heights = np.append(p[ids], other[i]) if with_other else p[ids]
        bars = ax.bar(x + (i - (len(probs) - 1) / 2) * width, heights, width, label=label, color=colour)
        if with_other:
            bars[-1].set_hatch("//")
            bars[-1].set_edgecolor("white")
    width_in = fig.get_figwidth() * 0.7 / max(len(labels), 1)  # room per bar group (the legend takes the rest)
    turn = max((len(t) for t in labels), default=0) * 0.09 > 0.9 * width_in  # ~0.09 in per character at 10 pt
    ax.set_xticks(x, labels, rotation=45 if turn else 0, ha="right" if turn else "center")
    ax.set_ylabel("next-token probability")
    ax.set_xlabel("next token")
    ax.set_title(title or (f"Next token after “{prefix}”" if prefix else "First token of the completion"))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never over a bar
    return fig


@paper_style
def plot_reward_histograms(series: Mapping[str, tuple], bins: int | Sequence[float] | None = None,
                           title: str | None = None, max_levels: int = 25, min_prob: float = 1e-3) -> Figure:
    """Reward distributions: grouped bars at each reward value when there are at most
    ``max_levels`` distinct values (and ``bins`` is None), else step histograms.

    Reward values with probability below ``min_prob`` under every series at either end of the
    range are left off the axis (their bars would be invisible).

    Parameters
    ----------
    series : {label: (values [n], weights [n] or None)}
        Rewards and their probabilities (exact tables) or None (equally weighted draws).
    bins : int or edges, optional
        Histogram bins (forces step histograms). Default: 30 when there are many distinct values.
    """
    if not series:
        raise ConfigError("no reward series to plot")
    data = {}
    for label, (vals, w) in series.items():
        v = _arr(vals, label)
        ww = np.ones_like(v) if w is None else _arr(w, label)
        keep = np.isfinite(v)
        data[label] = (v[keep], ww[keep] / ww[keep].sum())
    levels = np.unique(np.round(np.concatenate([v for v, _ in data.values()]), 9))
    fig, (ax,) = new_figure()
    colours = _colours(data)
    if bins is None and levels.size <= max_levels:
        mass = np.stack([np.bincount(np.searchsorted(levels, np.round(v, 9)), weights=w, minlength=levels.size)
                         for v, w in data.values()])
        seen = np.flatnonzero(mass.max(0) >= min_prob)
        lo, hi = (seen[0], seen[-1] + 1) if seen.size else (0, levels.size)
        levels, mass = levels[lo:hi], mass[:, lo:hi]
        step = float(np.min(np.diff(levels))) if levels.size > 1 else 1.0
        width = 0.8 * step / len(data)
        for i, (label, colour) in enumerate(zip(data, colours)):
            ax.bar(levels + (i - (len(data) - 1) / 2) * width, mass[i], width, color=colour, label=label)
        if levels.size <= 8:  # more would crowd the axis: the default locator picks ticks
            ax.set_xticks(levels, [f"{v:g}".replace("-", "−") for v in levels])
    else:
        for (label, (v, w)), colour in zip(data.items(), colours):
            ax.hist(v, bins=30 if bins is None else bins, weights=w, histtype="step", lw=2, color=colour,
                    label=label)
    ax.set_xlabel("reward r(x)")
    ax.set_ylabel("probability")
    ax.set_title(title or "Reward distribution")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig
