"""Rewards named on the command line: ``parse_reward(spec, lm)``.

Specs::

    sentiment            the default model's lexicon sentiment (needs its vocabulary)
    length               number of completion tokens
    contains:WORD        number of times WORD occurs in the completion text
    regex:PATTERN        1.0 if PATTERN matches the completion text, else 0.0
    classifier:PATH[:LABEL]   logit of LABEL (default 1) of a sequence classifier at PATH
    bradley_terry:DIR    a Bradley-Terry reward model written by ``BradleyTerryReward.save``
    package.module:function   an importable reward: function(prompts, completions) -> floats
                              (or a TokenReward object), used as it is
    factory:package.module:function   function(lm) -> reward, called with the prior (for rewards
                              that need its tokenizer or device)

Every subcommand (exact, evaluate, train's ``[target] reward``) reads specs with this one parser.
"""

from __future__ import annotations

import importlib
import re

import torch

from bayes_rlhf._checks import did_you_mean
from bayes_rlhf.errors import PromptError, RewardError
from bayes_rlhf.models.text import encode_known
from bayes_rlhf.rewards.base import TokenReward

SPEC_HELP = ("sentiment | length | contains:WORD | regex:PATTERN | classifier:PATH[:LABEL] | "
             "bradley_terry:DIR | package.module:function (the reward) | factory:package.module:function "
             "(function(lm) -> reward)")
_KINDS = {"contains", "regex", "classifier", "bradley_terry", "factory"}
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def check_spec(spec) -> None:
    """RewardError now, before any model is loaded, for a spec of no known form or a function that
    cannot be imported (``parse_reward`` builds the reward once the prior is loaded)."""
    if not isinstance(spec, str):
        raise RewardError(f"a reward spec must be a string such as 'sentiment', got {spec!r}")
    kind, _, arg = spec.partition(":")
    if kind == "regex" and arg:
        try:
            re.compile(arg)
        except re.error as exc:
            raise RewardError(f"bad regular expression {arg!r}: {exc}") from exc
    if spec in ("sentiment", "length") or (kind in _KINDS - {"factory"} and arg):
        return
    if kind == "factory" and arg:
        _import(arg, spec)
    elif kind not in _KINDS and _DOTTED.fullmatch(kind) and arg.isidentifier():
        _import(spec, spec)
    else:
        raise RewardError(f"unknown reward spec {spec!r}; use one of: {SPEC_HELP}{_near(spec)}")


def parse_reward(spec: str, lm):
    """A reward object for ``spec`` (see the module docstring); RewardError for an unknown spec."""
    check_spec(spec)
    kind, _, arg = spec.partition(":")
    if spec == "sentiment":
        from bayes_rlhf.models.default_model import POSITIVE
        from bayes_rlhf.rewards.sentiment import sentiment_reward

        vocab = lm.tokenizer.get_vocab()
        if not all(w in vocab for w in POSITIVE):
            raise RewardError("the 'sentiment' reward needs the default model's vocabulary; use another spec")
        return sentiment_reward(lm)
    if spec == "length":
        return TokenReward(lambda ids, mask: mask.sum(-1).to(torch.float64), name="length")
    if kind == "contains":
        try:  # a word the tokenizer cannot spell never occurs: the reward would be 0 on every completion
            encode_known(lm.tokenizer, arg, add_special_tokens=False, what="text of the reward 'contains:'")
        except PromptError as exc:
            raise RewardError(f"{exc}; the reward {spec!r} would be 0 on every completion") from None
        return _named(lambda p, c: [float(x.count(arg)) for x in c], f"contains[{arg}]")
    if kind == "regex":
        pattern = re.compile(arg)
        return _named(lambda p, c: [1.0 if pattern.search(x) else 0.0 for x in c], f"regex[{arg}]")
    if kind == "classifier":
        from bayes_rlhf.rewards.classifier import ClassifierReward

        path, _, label = arg.rpartition(":") if arg.count(":") else (arg, "", "1")
        label = int(label) if label.isdigit() else label
        _check_local(path or arg, spec)
        return ClassifierReward(path or arg, label=label)
    if kind == "bradley_terry":
        from bayes_rlhf.rewards.bradley_terry import BradleyTerryReward

        _check_local(arg, spec)
        return BradleyTerryReward.load(arg, device=lm.device)
    if kind == "factory":
        return _import(arg, spec)(lm)
    return _import(spec, spec)


def _check_local(name: str, spec: str) -> None:
    """RewardError for a path that is plainly local (./x, /x, ../x, or under a folder that is here) and
    does not exist: said as such, not as a malformed hub id or an empty folder."""
    from pathlib import Path

    from bayes_rlhf.models.loading import looks_like_hub_id

    path = Path(name)
    if path.exists():
        return
    if not looks_like_hub_id(name) or (path.parent.is_dir() and str(path.parent) not in (".", "")):
        raise RewardError(f"reward spec {spec!r}: {name!r} does not exist; give the folder of a saved model "
                          "(or a hub id such as owner/name)")


def _import(path: str, spec: str):
    """The callable at ``module:function``; RewardError if it cannot be imported or called."""
    module, _, attr = path.partition(":")
    if not (_DOTTED.fullmatch(module) and attr.isidentifier()):
        raise RewardError(f"reward spec {spec!r}: expected package.module:function after 'factory:'")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise RewardError(f"could not import reward {spec!r}: {exc}{_near(spec) if path == spec else ''}") from exc
    if not callable(fn) and not hasattr(fn, "score_batch"):
        raise RewardError(f"reward {spec!r} is a {type(fn).__name__}, not a callable reward")
    return fn


def _near(spec: str) -> str:
    """``did_you_mean`` for a spec among the named ones (``regx:great`` -> ``regex:great``)."""
    _, _, arg = spec.partition(":")
    return did_you_mean(spec, ["sentiment", "length"] + [f"{k}:{arg}" for k in sorted(_KINDS) if arg])


def _named(fn, name: str):
    fn.__name__ = name
    return fn
