"""The flat ``TrainerConfig`` keywords of earlier versions (``ppo_clip``) and the sections they set.

Every settings field declares its flat keyword, if it had one (``settings.setting(..., flat)``);
from those declarations::

    FLAT_KEYS["ppo_clip"] = [("ppo", "clip"), ("grpo", "clip")]
    TrainerConfig(ppo_clip=0.1)      apply_flat:  ppo=PPOConfig(clip=0.1), grpo=GRPOConfig(clip=0.1)
    {"ppo.clip": 0.1}  (a TOML key)  nest_dotted: {"ppo": {"clip": 0.1}}
    config.flat_dict()               flat_form:   the dict (and fingerprint) earlier versions recorded
    config.ppo_clip  (read, write)   a property over the fields it sets (``install_flat_keywords``)

so old keyword calls, TOML files, checkpoints and run folders keep loading and resuming.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, fields, replace

from bayes_rlhf._checks import did_you_mean
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.variational.settings import SECTIONS

#: section name (``TrainerConfig`` field) -> its settings dataclass
SECTION_TYPES = {s.name: s for s in SECTIONS}

#: flat keyword of earlier versions -> the (section, field) pairs it sets ("ppo_clip" sets PPO's and GRPO's clip)
FLAT_KEYS: dict[str, list[tuple[str, str]]] = {}
for _s in SECTIONS:
    for _f in fields(_s):
        if _f.metadata["flat"]:
            FLAT_KEYS.setdefault(_f.metadata["flat"], []).append((_s.name, _f.name))


def apply_flat(kwargs: dict) -> dict:
    """Constructor keywords with the flat ones folded into their sections."""
    out = {k: v for k, v in kwargs.items() if k not in FLAT_KEYS}
    for key in [k for k in kwargs if k in FLAT_KEYS]:
        for section, name in FLAT_KEYS[key]:
            current = out.get(section, SECTION_TYPES[section]())
            if isinstance(current, dict):
                out[section] = current | {name: kwargs[key]}
            else:
                out[section] = replace(as_section(current, SECTION_TYPES[section]), **{name: kwargs[key]})
    return out


def as_section(value, kind):
    """``value`` as a ``kind`` section: a dict is built into one (unknown keys refused)."""
    if isinstance(value, dict):
        names = sorted(f.name for f in fields(kind))
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ConfigError(f"unknown TrainerConfig.{kind.name} field(s) {unknown}; valid fields: "
                              f"{names}{did_you_mean(unknown, names)}")
        return kind(**value)
    if not isinstance(value, kind):
        raise ConfigError(f"TrainerConfig.{kind.name} must be a {kind.__name__} or a dict, got {type(value).__name__}")
    return value


def nest_dotted(d: dict) -> dict:
    """``{"ppo.clip": x}`` as ``{"ppo": {"clip": x}}`` (merged with a ``"ppo"`` table if given)."""
    out = {k: v for k, v in d.items() if "." not in k}
    for k, v in d.items():
        if "." in k:
            section, name = k.split(".", 1)
            base = out.get(section, {})
            out[section] = (base if isinstance(base, dict) else asdict(base)) | {name: v}
    return out


def flat_form(sections: dict) -> dict:
    """The sections' fields under their flat keywords (``ppo_clip``); a flat keyword whose fields
    differ (``ppo.clip`` != ``grpo.clip``, never so in a config built from flat keywords) and a
    field without one appear as dotted ``section.field`` keys. Two different settings never give
    the same dict, and a config of an earlier version gives the dict it gave then."""
    out = {}
    for key, targets in FLAT_KEYS.items():
        if any(s not in sections for s, _ in targets):  # a section left out (``Section.recorded_at_default``)
            continue
        values = [getattr(sections[s], n) for s, n in targets]
        if all(v == values[0] and type(v) is type(values[0]) for v in values):
            out[key] = values[0]
        else:
            out.update({f"{s}.{n}": v for (s, n), v in zip(targets, values)})
    for name, section in sections.items():
        out.update({f"{name}.{f.name}": getattr(section, f.name) for f in fields(section) if not f.metadata["flat"]})
    return out


def _flat_property(key: str) -> property:
    targets = FLAT_KEYS[key]

    def get(self):
        values = [getattr(getattr(self, s), n) for s, n in targets]
        if any(v != values[0] for v in values):
            where = " and ".join(f"{s}.{n} = {v!r}" for (s, n), v in zip(targets, values))
            raise ConfigError(f"TrainerConfig.{key} is ambiguous here ({where}); read one of those fields")
        return values[0]

    def set_(self, value):
        for s, n in targets:
            setattr(self, s, replace(getattr(self, s), **{n: value}))

    return property(get, set_, doc=f"The flat keyword {key}: " + ", ".join(f"{s}.{n}" for s, n in targets))


def install_flat_keywords(cls):
    """Give the dataclass ``cls`` (``TrainerConfig``) a property per flat keyword and a constructor
    that takes them (``apply_flat`` before the generated ``__init__``); returns ``cls``."""
    for key in FLAT_KEYS:
        setattr(cls, key, _flat_property(key))
    generated = cls.__init__

    @functools.wraps(generated)
    def init(self, *args, **kwargs):
        generated(self, *args, **apply_flat(kwargs))

    cls.__init__ = init
    return cls
