"""Renamed keywords: the old name keeps working for a while, with a DeprecationWarning."""

from __future__ import annotations

import functools
import warnings

from bayes_rlhf.errors import ConfigError


def renamed_keywords(**old_to_new: str):
    """Decorate a function whose keyword ``old`` is now ``new``: ``old=`` maps to ``new=`` with a warning.

    Giving both is a ConfigError. ``inspect.signature`` shows the new names (``functools.wraps``).
    """
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise ConfigError(f"{fn.__qualname__}: give {new}= only ({old}= is its deprecated name)")
                    warnings.warn(f"{fn.__qualname__}({old}=...) is deprecated; use {new}=", DeprecationWarning,
                                  stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)
        return inner
    return wrap
