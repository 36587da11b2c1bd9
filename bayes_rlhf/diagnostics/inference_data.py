"""Conversion of posteriors, weighted samples, training histories and comparisons to ArviZ.

Groups of the ``arviz.InferenceData`` this module builds (all optional)::

    posterior, sample_stats    weighted samples: reward, length, completion_ids[position]
                               (chain=1, draw=n); log_weight, weight, prompt_index (chain,
                               draw); log_z, ess, khat per prompt (dim prompt)
    exact_<i>                  the i-th enumerated posterior table (dims completion, position):
                               completion_ids, mask, prior_log_prob, reward, log_prob;
                               attrs prompt, beta, log_z
    training                   one row per training step (dim step), every numeric column
    comparisons                exact Comparison fields per policy (dim policy)

Saved as netCDF (h5netcdf engine) atomically: write a temporary file, then rename.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from bayes_rlhf.diagnostics.weights import EmptySamplesError, _as_log_weights, weight_diagnostics
from bayes_rlhf.errors import BayesRLHFError, ConfigError
from bayes_rlhf.exact.posterior import ExactPosterior


class InferenceDataError(BayesRLHFError):
    """An InferenceData file is missing, unreadable or lacks the groups asked for."""


def _az():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz as az
    return az


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return x.numpy() if x.dtype != torch.bool else x.numpy().astype(np.int8)
    return np.asarray(x)


def _attr(v):
    """A netCDF-storable attribute value (str, int, float)."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float, str)):
        return v
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return float(v)
    return str(v)


def posterior_dataset(posterior: ExactPosterior):
    """The enumerated table as an ``xarray.Dataset`` (dims completion [K], position [T])."""
    import xarray as xr

    dims = ("completion", "position")
    return xr.Dataset(
        {"completion_ids": (dims, _np(posterior.completion_ids)), "mask": (dims, _np(posterior.mask)),
         "prior_log_prob": ("completion", _np(posterior.prior_log_probs)),
         "reward": ("completion", _np(posterior.rewards)), "log_prob": ("completion", _np(posterior.log_probs))},
        attrs={"prompt": posterior.prompt, "beta": float(posterior.beta), "log_z": float(posterior.log_z)})


def _completion_arrays(samples) -> tuple[Any, Any]:
    comp = getattr(samples, "completions", None)
    if comp is None:
        comp = getattr(samples, "samples", None)
    src = comp if comp is not None and hasattr(comp, "ids") else samples
    return getattr(src, "ids", None), getattr(src, "mask", None)


def prompt_groups(samples, n: int) -> list[torch.Tensor]:
    """Row indices [n_p] of each prompt of duck-typed samples (one group without ``prompt_index``)."""
    pi = getattr(samples, "prompt_index", None)
    if pi is None:
        return [torch.arange(n)]
    pi = torch.as_tensor(pi).long().reshape(-1).cpu()
    if pi.numel() != n:
        raise ConfigError(f"prompt_index has {pi.numel()} entries for {n} samples")
    return [torch.nonzero(pi == p).squeeze(-1) for p in range(int(pi.max()) + 1)]


def _float_list(v, num: int) -> list[float]:
    if v is None:
        return [math.nan] * num
    t = torch.as_tensor(v, dtype=torch.float64).reshape(-1)
    return t.tolist() if t.numel() == num else [math.nan] * num


def samples_datasets(samples):
    """(posterior, sample_stats) datasets of duck-typed weighted samples.

    ``samples`` needs ``log_weights`` [n] or ``rewards`` [n]; ``ids`` and ``mask`` [n, T]
    (directly or on ``samples.completions``), ``prompt_index`` [n] and ``log_z`` (float or [P])
    are used when present. Exact draws (no ``log_weights``) get zero log-weights. Weights are
    normalised, and ESS / k-hat computed, within each prompt (variables with dim ``prompt``).
    """
    import xarray as xr

    ids, mask = _completion_arrays(samples)
    lw = getattr(samples, "log_weights", None)
    rewards = getattr(samples, "rewards", None)
    n = len(lw) if lw is not None else (len(rewards) if rewards is not None else 0)
    if n == 0:
        raise EmptySamplesError("the sample set is empty: nothing to convert")
    lw = torch.zeros(n, dtype=torch.float64) if lw is None else torch.as_tensor(lw).detach().double().cpu()
    groups = prompt_groups(samples, n)
    diags = [weight_diagnostics(lw[g]) for g in groups]
    weight = torch.zeros(n, dtype=torch.float64)
    for g in groups:
        weight[g] = torch.softmax(_as_log_weights(lw[g]), 0)
    post: dict = {}
    if rewards is not None:
        post["reward"] = (("chain", "draw"), _np(rewards).astype(np.float64).reshape(1, n))
    if ids is not None:
        post["completion_ids"] = (("chain", "draw", "position"), _np(ids)[None])
        if mask is not None:
            post["length"] = (("chain", "draw"), _np(mask).sum(-1).reshape(1, n))
    log_z = _float_list(getattr(samples, "log_z", None), len(groups))
    log_z = [d.log_z if math.isnan(z) else z for z, d in zip(log_z, diags)]
    attrs = {"num_samples": n, "num_prompts": len(groups)}
    stats = {"log_weight": (("chain", "draw"), _np(lw).reshape(1, n)),
             "weight": (("chain", "draw"), _np(weight).reshape(1, n)),
             "log_z": ("prompt", np.array(log_z)), "ess": ("prompt", np.array([d.ess for d in diags])),
             "khat": ("prompt", np.array([d.khat for d in diags]))}
    if getattr(samples, "prompt_index", None) is not None:
        stats["prompt_index"] = (("chain", "draw"), _np(torch.as_tensor(samples.prompt_index)).reshape(1, n))
    return xr.Dataset(post, attrs=attrs), xr.Dataset(stats, attrs=attrs)


def _history_rows(history) -> list[Mapping]:
    for name in ("rows", "as_rows", "to_rows"):
        rows = getattr(history, name, None)
        if rows is not None:
            history = rows() if callable(rows) else rows
            break
    rows = list(history)
    if not all(isinstance(r, Mapping) for r in rows):
        raise ConfigError("a training history must be rows of dicts (or have a .rows attribute)")
    return rows


def _num(v) -> float:
    """A float, NaN for a missing (None) entry."""
    return math.nan if v is None else float(v)


def history_dataset(history):
    """A training history (rows of dicts) as a dataset with dim ``step``; numeric columns only."""
    import xarray as xr

    rows = _history_rows(history)
    if not rows:
        raise EmptySamplesError("the training history has no rows")
    keys: list[str] = []
    for r in rows:
        keys += [k for k, v in r.items() if k not in keys and isinstance(v, (int, float, np.number, torch.Tensor))
                 and not isinstance(v, bool)]
    cols = {k: ("step", np.array([_num(r.get(k)) for r in rows])) for k in keys}
    return xr.Dataset(cols)


def comparisons_dataset(comparisons: Mapping[str, Any]):
    """Exact comparisons ({label: Comparison or dict of floats}) as a dataset with dim ``policy``."""
    import xarray as xr

    if not comparisons:
        raise EmptySamplesError("no comparisons given")
    rows = {k: (v.as_dict() if hasattr(v, "as_dict") else dict(v)) for k, v in comparisons.items()}
    fields = sorted({f for r in rows.values() for f in r})
    data = {f: ("policy", np.array([float(r.get(f, math.nan)) for r in rows.values()])) for f in fields}
    return xr.Dataset(data, coords={"policy": list(rows)})


def to_inference_data(*, posteriors: ExactPosterior | Iterable[ExactPosterior] | None = None,
                      samples: Any = None, history: Any = None,
                      comparisons: Mapping[str, Any] | None = None):
    """One ``arviz.InferenceData`` holding whatever is given (see the module docstring)."""
    az = _az()
    groups = {}
    if isinstance(posteriors, ExactPosterior):
        posteriors = [posteriors]
    for i, p in enumerate(posteriors or []):
        groups[f"exact_{i}"] = posterior_dataset(p)
    if samples is not None:
        groups["posterior"], groups["sample_stats"] = samples_datasets(samples)
    if history is not None:
        groups["training"] = history_dataset(history)
    if comparisons:
        groups["comparisons"] = comparisons_dataset(comparisons)
    if not groups:
        raise ConfigError("nothing to convert: pass posteriors, samples, history or comparisons")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return az.InferenceData(**groups)


def save_inference_data(idata, path: str | os.PathLike) -> Path:
    """Write ``idata`` to a netCDF file atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            idata.to_netcdf(tmp, engine="h5netcdf")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_inference_data(path: str | os.PathLike):
    """Read an InferenceData netCDF file fully into memory (the file is closed afterwards)."""
    az = _az()
    path = Path(path)
    if not path.is_file():
        raise InferenceDataError(f"no InferenceData file at {path}; write one with save_inference_data")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            idata = az.from_netcdf(path, engine="h5netcdf")
            for g in idata.groups():
                getattr(idata, g).load()
    except (OSError, ValueError, KeyError) as exc:
        raise InferenceDataError(f"{path} is not a readable InferenceData netCDF file ({exc}); "
                                 "it may be half-written: write it again") from exc
    return idata


def posterior_from_dataset(ds, lm=None, *, vocabulary=None) -> ExactPosterior:
    """Rebuild an ``ExactPosterior`` from an ``exact_<i>`` group and the prior's ``lm`` (or, without
    the model, its ``vocabulary``)."""
    return ExactPosterior(str(ds.attrs["prompt"]), torch.from_numpy(ds["completion_ids"].values).long(),
                          torch.from_numpy(ds["mask"].values.astype(bool)),
                          torch.from_numpy(ds["prior_log_prob"].values).double(),
                          torch.from_numpy(ds["reward"].values).double(), float(ds.attrs["beta"]), lm, vocabulary)
