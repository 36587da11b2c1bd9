"""The reward protocol, ``TokenReward`` and the checked call ``evaluate_reward``."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from bayes_rlhf.errors import BayesRLHFError, RewardError


def reward_name(reward) -> str:
    """A readable name for error messages and reports."""
    return getattr(reward, "name", None) or getattr(reward, "__name__", None) or type(reward).__name__


class TokenReward:
    """A reward computed from token ids, without decoding.

    Parameters
    ----------
    fn : callable
        ``fn(completion_ids: LongTensor [n, T], completion_mask: BoolTensor [n, T]) -> Tensor [n]``.
        The mask is True at real tokens (the EOS that ends a completion included).
    name : str, optional
    prefix_closed : bool
        True if the reward is -inf on a prefix only when it is -inf on every extension of it (a
        banned token, once drawn, stays drawn): ``PrefixPotential`` may then prune such prefixes.
    """

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], name: str | None = None,
                 prefix_closed: bool = False):
        if not callable(fn):
            raise RewardError(f"TokenReward needs a callable, got {type(fn).__name__}")
        if not isinstance(prefix_closed, bool):
            raise RewardError(f"prefix_closed must be True or False, got {prefix_closed!r}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "token_reward")
        self.prefix_closed = prefix_closed

    def score_batch(self, lm, prompts: Sequence[str], ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.fn(ids, mask)

    def __repr__(self) -> str:
        return f"TokenReward({self.name})"


def _as_tensor(values, n: int, name: str) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        out = values.detach()
    elif isinstance(values, np.ndarray):
        if not np.issubdtype(values.dtype, np.number):
            raise RewardError(f"reward {name!r} returned an ndarray of dtype {values.dtype}; return floats")
        out = torch.from_numpy(values)
    elif isinstance(values, (list, tuple)):
        if not all(isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) for v in values):
            bad = next(type(v).__name__ for v in values
                       if not isinstance(v, (int, float, np.floating, np.integer)) or isinstance(v, bool))
            raise RewardError(f"reward {name!r} returned a sequence holding {bad}; return floats")
        out = torch.tensor([float(v) for v in values], dtype=torch.float64)
    else:
        raise RewardError(f"reward {name!r} returned {type(values).__name__}; return a Tensor, ndarray "
                          "or list of floats, one per completion")
    if out.dtype == torch.bool or not (out.is_floating_point() or out.dtype in (torch.int32, torch.int64)):
        raise RewardError(f"reward {name!r} returned dtype {out.dtype}; return floats")
    out = out.to(torch.float64).reshape(-1) if out.dim() <= 1 else out
    if out.dim() != 1 or out.shape[0] != n:
        raise RewardError(f"reward {name!r} returned shape {tuple(out.shape)} for {n} completions; "
                          f"return one value per completion, shape ({n},)")
    return out


# rows re-run one at a time to find the completion a failing reward chokes on (error path only)
_PROBE_ROWS = 256


def _call(reward, lm, prompts: list[str], ids: torch.Tensor, mask: torch.Tensor, texts: list[str] | None):
    if texts is None:
        return reward.score_batch(lm, prompts, ids, mask)
    return reward(prompts, texts)


def _failure(reward, name: str, lm, prompts: list[str], ids: torch.Tensor, mask: torch.Tensor,
             texts: list[str] | None, exc: Exception) -> RewardError:
    """A RewardError naming the reward and the first completion it fails on (found row by row)."""
    n = ids.shape[0]
    first, alone = 0, False
    for i in range(min(n, _PROBE_ROWS)):
        try:
            _call(reward, lm, prompts[i:i + 1], ids[i:i + 1], mask[i:i + 1],
                  None if texts is None else texts[i:i + 1])
        except Exception:  # noqa: BLE001 - any failure marks the row; KeyboardInterrupt still stops
            first, alone = i, True
            break
    text = texts[first] if texts is not None else lm.decode(ids[first:first + 1], mask[first:first + 1])[0]
    where = (f"on completion {first} {text!r} (prompt {prompts[first]!r})" if alone else
             f"on a batch of {n} completions (the first {min(n, _PROBE_ROWS)} pass one at a time; "
             f"completion 0 is {text!r}, prompt {prompts[0]!r})")
    return RewardError(f"reward {name!r} raised {type(exc).__name__}: {exc} {where}; make the reward handle "
                       "every completion the model can produce (the original error is chained below)")


def evaluate_reward(reward, lm, prompts: Sequence[str], ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Rewards (float64 Tensor [n], on CPU) of completions, checked.

    ``prompts`` has one prompt per row. Text rewards get decoded completions. -inf is allowed
    (a hard constraint); NaN and +inf are errors naming the reward. This is the one place rewards
    are called: a reward that raises becomes a ``RewardError`` naming it and the first completion
    it fails on, chained to the original exception (a ``BayesRLHFError`` the reward raises itself,
    and ``KeyboardInterrupt``, pass through unchanged).
    """
    n = ids.shape[0]
    name = reward_name(reward)
    if not isinstance(prompts, list):  # a list is read, never changed: no copy
        prompts = list(prompts)
    if hasattr(reward, "score_batch"):
        texts = None
    elif callable(reward):
        texts = lm.decode(ids, mask)
    else:
        raise RewardError(f"reward {name!r} is not callable; pass f(prompts, completions) or a TokenReward")
    try:
        values = _call(reward, lm, prompts, ids, mask, texts)
    except BayesRLHFError:
        raise
    except Exception as exc:
        raise _failure(reward, name, lm, prompts, ids, mask, texts, exc) from exc
    out = _as_tensor(values, n, name).cpu()
    if torch.isnan(out).any():
        i = int(torch.isnan(out).nonzero()[0])
        raise RewardError(f"reward {name!r} returned NaN for completion {i} "
                          f"({lm.decode(ids[i:i + 1], mask[i:i + 1])[0]!r}); return finite values or -inf")
    if (out == math.inf).any():
        raise RewardError(f"reward {name!r} returned +inf; the posterior would not be normalisable")
    return out
