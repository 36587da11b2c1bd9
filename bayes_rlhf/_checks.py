"""Ground-floor input checks shared by every module: numbers, random generators and names.

Python and numpy numbers are accepted alike (``np.int64`` where an int is asked for, any real
numpy scalar where a float is); bools and strings are refused. Accepted values come back as
plain Python numbers, so they serialise (JSON, TOML) and compare like the numbers users typed.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable

import numpy as np
import torch

from bayes_rlhf.errors import ConfigError


def is_integer(value) -> bool:
    """True for Python and numpy integers, False for bools (``True`` is not a count)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_real(value) -> bool:
    """True for Python and numpy integers and floats (NaN and inf included), False for bools."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def plain(value):
    """A numpy scalar as the Python number it holds; anything else unchanged."""
    return value.item() if isinstance(value, np.generic) else value


def check_int(value, name: str, low: int | None = 1) -> int:
    """``value`` as a Python int, checked to be an integer >= ``low`` (ConfigError naming ``name``)."""
    if not is_integer(value) or (low is not None and value < low):
        bound = "" if low is None else f" >= {low}"
        raise ConfigError(f"{name} must be an integer{bound}, got {value!r}")
    return int(value)


def check_real(value, name: str, low: float = -math.inf, high: float = math.inf,
               low_open: bool = False) -> float:
    """``value`` as a Python number, checked finite and in [low, high] (or (low, high] with ``low_open``).

    Python ints stay ints (so ``beta=1`` keeps its type); numpy numbers become Python numbers.
    """
    ok = is_real(value) and math.isfinite(value) and value <= high and (value > low if low_open else value >= low)
    if not ok:
        if low == -math.inf and high == math.inf:
            rng = ""
        elif high == math.inf:
            rng = f" {'>' if low_open else '>='} {low:g}"
        else:
            rng = f" in {'(' if low_open else '['}{low:g}, {high:g}]"
        raise ConfigError(f"{name} must be a finite number{rng}, got {value!r}")
    return plain(value)


def check_generator(generator, name: str = "generator") -> None:
    """A ``torch.Generator`` or None; anything else (a seed, a numpy Generator) is a ConfigError."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ConfigError(f"{name} must be a torch.Generator (or None), got {type(generator).__name__} "
                          f"{generator!r}; pass torch.Generator().manual_seed(seed) to fix the seed")


def did_you_mean(names, options: Iterable[str]) -> str:
    """The end of an error message for a typo'd name: ``"; did you mean 'rloo'?"``, or ``""``.

    ``names`` is the name given (or a list of them, e.g. unknown keys); ``options`` the valid names
    of the registry it should have come from. The closest match (``difflib``, ratio >= 0.6) is
    suggested for each name, all of them where several tie (``'dgp'``: ``'dpg' or 'dpo'``); names
    with none, and non-strings, get nothing. Every check of a name against a registry (objectives,
    settings choices, reward specs, twists, resamplers, config keys) ends its message with this,
    after the list of valid names.
    """
    options = [o for o in options if isinstance(o, str)]
    if isinstance(names, str):
        given = [names]
    elif isinstance(names, (list, tuple, set, frozenset)):
        given = [n for n in names if isinstance(n, str)]
    else:
        given = []
    hits = []
    for name in given:
        close = difflib.get_close_matches(name, options, n=len(options) or 1)
        ratio = {c: difflib.SequenceMatcher(None, name, c).ratio() for c in close}
        best = [c for c in close if ratio[c] == ratio[close[0]]] if close else []
        if best and name not in options:
            hits.append((name, " or ".join(repr(c) for c in sorted(best))))
    if not hits:
        return ""
    if len(given) == 1:
        return f"; did you mean {hits[0][1]}?"
    return "; did you mean " + ", ".join(f"{m} (for {n!r})" for n, m in hits) + "?"
