"""Training checkpoints: safetensors files plus a JSON manifest, written atomically.

Layout of ``<checkpoint_dir>/last/``::

    model.safetensors       policy weights, value head ("value_head.*"), learned log Z ("log_z")
    optimizer.safetensors   every tensor of the optimiser state ("state.<param>.<name>")
    rng.safetensors         the run's torch.Generator state ("state"; process 0's in a multi-process
                            run) and those of processes 1..N-1 ("process.<i>")
    meta.json               step, config fingerprint and dict, optimiser param groups, history rows

A checkpoint is written to a temporary directory beside ``last/`` and swapped in with renames,
so a run killed while writing leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bayes_rlhf.errors import BayesRLHFError, ConfigError
from bayes_rlhf.io import atomic_dir

NAME = "last"


def _plain(tensors: dict) -> dict:
    """Contiguous CPU copies (safetensors refuses shared storage such as tied embeddings)."""
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()}


def _flatten_optimizer(state_dict: dict) -> tuple[dict, dict]:
    tensors, scalars = {}, {}
    for pid, st in state_dict["state"].items():
        for name, v in st.items():
            key = f"state.{pid}.{name}"
            if isinstance(v, torch.Tensor):
                tensors[key] = v
            else:
                scalars[key] = v
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(directory, *, model_tensors: dict, optimizer, generator: torch.Generator,
                    step: int, fingerprint: str, config: dict, history_rows: list[dict],
                    process_rng: list[torch.Tensor] | None = None) -> Path:
    """Write the checkpoint of ``step`` to ``directory/last`` atomically; return its path.

    ``process_rng`` holds the generator states of every process of a multi-process run (process 0's
    first, which is ``generator``'s); None for one process.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    meta = {"step": step, "fingerprint": fingerprint, "config": config, "optimizer": opt_meta,
            "history": history_rows}
    final = directory / NAME
    with atomic_dir(final) as tmp:
        save_file(_plain(model_tensors), str(tmp / "model.safetensors"))
        save_file(_plain(opt_tensors), str(tmp / "optimizer.safetensors"))
        rng = {"state": generator.get_state()}
        rng.update({f"process.{i}": st for i, st in enumerate(process_rng or []) if i > 0})
        save_file(_plain(rng), str(tmp / "rng.safetensors"))
        with open(tmp / "meta.json", "w") as fh:
            json.dump(meta, fh, default=str)
            fh.flush()
            os.fsync(fh.fileno())
    return final


def has_checkpoint(directory) -> bool:
    return directory is not None and (Path(directory) / NAME / "meta.json").exists()


def checkpoint_step(directory) -> int | None:
    """The step of the checkpoint in ``directory`` (from its meta.json alone), or None if there is none."""
    if not has_checkpoint(directory):
        return None
    try:
        with open(Path(directory) / NAME / "meta.json") as fh:
            return int(json.load(fh)["step"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _unreadable(Path(directory) / NAME, exc) from exc


def _same(a, b) -> bool:
    return json.dumps(a, default=str) == json.dumps(b, default=str)


def load_checkpoint(directory, fingerprint: str, config: dict, defaults: dict | None = None) -> dict:
    """Read ``directory/last``; a checkpoint of another config is a ConfigError naming the fields.

    ``defaults`` (field -> default value): a field the checkpoint's config lacks (added to
    TrainerConfig after it was written) matches when the current value is its default, so a
    checkpoint of an earlier version still resumes.

    Returns a dict with step, model (tensors), optimizer (state dict), rng (ByteTensor), history and
    process_rng (every process's generator state, process 0's first; only process 0's in checkpoints of
    one process or of versions that kept only that one).
    """
    path = Path(directory) / NAME
    try:
        return _load(path, directory, fingerprint, config, defaults)
    except BayesRLHFError:
        raise
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:  # a file cut short or missing
        raise _unreadable(path, exc) from exc


def _unreadable(path: Path, exc: Exception) -> ConfigError:
    return ConfigError(f"the checkpoint in {str(path)!r} cannot be read ({type(exc).__name__}: {exc}); delete "
                       "it to start over, or set resume = false")


def _load(path: Path, directory, fingerprint: str, config: dict, defaults: dict | None) -> dict:
    with open(path / "meta.json") as fh:
        meta = json.load(fh)
    if meta["fingerprint"] != fingerprint:
        old, defaults = meta.get("config", {}), defaults or {}
        diff = sorted(k for k in set(old) | set(config)
                      if not (_same(old.get(k), config.get(k))
                              or (k not in old and k in defaults and _same(config.get(k), defaults[k]))))
        if diff or not old:
            raise ConfigError(f"checkpoint_dir {str(directory)!r} holds a run of a different configuration "
                              f"(differing: {diff or 'the target, prompts or model'}); use a new "
                              "checkpoint_dir, or set resume = false to start over there")
    opt = _unflatten_optimizer(load_file(str(path / "optimizer.safetensors")), meta["optimizer"])
    rng = load_file(str(path / "rng.safetensors"))
    others = sorted((int(k.split(".", 1)[1]), v) for k, v in rng.items() if k.startswith("process."))
    return {"step": int(meta["step"]), "model": load_file(str(path / "model.safetensors")), "optimizer": opt,
            "rng": rng["state"], "process_rng": [rng["state"]] + [v for _, v in others],
            "history": meta["history"]}
