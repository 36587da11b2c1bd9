"""``Section``, the base of the settings dataclasses, and the checks its fields declare.

A section field is ``setting(default, check, flat, **args)``: on creation every field's value goes
through ``check(value, label, **args)``, which returns it as a plain Python value or raises a
ConfigError naming the field as the user typed it (``TrainerConfig.ppo_clip (ppo.clip)``)::

    clip: float = setting(0.2, check_positive, "ppo_clip")     # in PPOConfig (settings.py)
    PPOConfig(clip=-1)   ->  ConfigError: TrainerConfig.ppo_clip (ppo.clip) must be a finite number > 0
"""

from __future__ import annotations

import math
from dataclasses import field, fields

from bayes_rlhf._checks import did_you_mean, is_integer, is_real, plain
from bayes_rlhf.errors import ConfigError


def check_int_at_least(v, label: str, low: int) -> int:
    if not is_integer(v) or v < low:
        raise ConfigError(f"{label} must be an integer >= {low}, got {v!r}")
    return int(v)


def check_positive(v, label: str) -> float:
    if not is_real(v) or not math.isfinite(v) or v <= 0:
        raise ConfigError(f"{label} must be a finite number > 0, got {v!r}")
    return plain(v)


def check_number(v, label: str, low: float, high: float = math.inf) -> float:
    if not is_real(v) or not math.isfinite(v) or not low <= v <= high:
        rng = f">= {low}" if high == math.inf else f"in [{low}, {high}]"
        raise ConfigError(f"{label} must be a number {rng}, got {v!r}")
    return plain(v)


def check_bool(v, label: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{label} must be true or false, got {v!r}")
    return v


def check_choice(v, label: str, options) -> str:
    if v not in options:
        raise ConfigError(f"{label} must be one of {list(options)}, got {v!r}{did_you_mean(v, options)}")
    return v


def check_finite_or_none(v, label: str) -> float | None:
    if v is not None and not (is_real(v) and math.isfinite(v)):
        raise ConfigError(f"{label} must be a finite number or None, got {v!r}")
    return plain(v)


def check_positive_or_none(v, label: str) -> float | None:
    return None if v is None else check_positive(v, label)


def setting(default, check, flat: str | None = None, **args):
    """A section field: its default, ``check(value, label, **args) -> value`` and its old flat keyword."""
    return field(default=default, metadata={"check": check, "args": args, "flat": flat})


class Section:
    """Base of the settings dataclasses: every field checked (and numpy numbers made plain) on creation.

    ``name`` is the section's field in ``TrainerConfig`` (error messages say ``TrainerConfig.<flat>``
    where a field had a flat keyword, so they name what a user of either form typed).
    """

    name = ""
    #: False: the section's fields are left out of ``TrainerConfig.flat_dict`` while all are at
    #: their defaults (a feature added later, whose absence must not change earlier fingerprints)
    recorded_at_default = True

    def __post_init__(self):
        for f in fields(self):
            where = f"{self.name}.{f.name}"
            label = f"TrainerConfig.{f.metadata['flat']} ({where})" if f.metadata["flat"] else f"TrainerConfig.{where}"
            object.__setattr__(self, f.name, f.metadata["check"](getattr(self, f.name), label, **f.metadata["args"]))
