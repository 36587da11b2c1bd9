"""Older calling forms that keep working for a while, with a DeprecationWarning: renamed keywords and a
generator passed by position where it is now keyword-only."""

from __future__ import annotations

import functools
import warnings

import torch

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


def positional_generator(num_positional: int):
    """Decorate a function whose ``generator`` became keyword-only after ``num_positional`` positional
    parameters (``self`` counted): one more positional argument, the generator of the older documented
    call ``f(..., generator)``, is moved to ``generator=`` with a DeprecationWarning.

    Only a ``torch.Generator`` or None is taken this way; anything else is left to the function, which
    then raises its TypeError. ``inspect.signature`` shows the keyword-only form.
    """
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            if len(args) == num_positional + 1 and "generator" not in kwargs and \
                    (args[-1] is None or isinstance(args[-1], torch.Generator)):
                warnings.warn(f"{fn.__qualname__}: pass the generator by keyword, generator=...; by position is "
                              "deprecated", DeprecationWarning, stacklevel=2)
                *args, kwargs["generator"] = args
            return fn(*args, **kwargs)
        return inner
    return wrap
