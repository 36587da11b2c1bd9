"""The run directory: what ``save_run`` writes and ``write_report`` / ``load_run`` read.

Layout (format ``bayes_rlhf.run/1``)::

    RUN_DIR/
      summary.json               written last: format, prompts, beta, per-posterior summaries,
                                 policy / history / sample labels, and a manifest of every
                                 file below with its size and sha256
      tokenizer/                 the prior's tokenizer (decodes completions without the model)
      posterior_<i>.safetensors  table of prompt i: completion_ids [K, T], mask [K, T],
                                 prior_log_probs [K], rewards [K]; one "policy.<label>" [K]
                                 (log q over the table) per policy
      history_<label>.json       training history rows (optional)
      samples_<label>.safetensors  log_weights [n], rewards [n], ids/mask [n, T] (optional)
      inference_data.nc          ArviZ InferenceData (exact_<i>, comparisons, training, samples)

Writing is atomic per file (temporary name, then rename) and the directory is valid only once
``summary.json`` exists and matches the manifest; an older ``summary.json`` is removed first, so
an interrupted write leaves a directory that ``load_run`` rejects with ``RunDirError``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from bayes_rlhf.diagnostics.exact import compare, policy_log_probs
from bayes_rlhf.diagnostics.inference_data import (_float_list, _history_rows, prompt_groups, save_inference_data,
                                                   to_inference_data)
from bayes_rlhf.diagnostics.weights import EmptySamplesError, weight_diagnostics
from bayes_rlhf.errors import BayesRLHFError, ConfigError
from bayes_rlhf.exact.posterior import ExactPosterior
from bayes_rlhf.io import json_restore, json_safe, umask_permissions, under_a_file
from bayes_rlhf.models.causal_lm import CausalLM
from bayes_rlhf.models.vocabulary import Vocabulary

RUN_FORMAT = "bayes_rlhf.run/1"


class RunDirError(BayesRLHFError):
    """A run directory is missing, half-written or not in the expected format."""


@dataclass
class Run:
    """A loaded run directory."""

    path: Path
    summary: dict
    posteriors: list[ExactPosterior]
    policies: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    histories: dict[str, list[dict]] = field(default_factory=dict)
    samples: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def inference_data_path(self) -> Path:
        return self.path / "inference_data.nc"


def _label(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_") or "x"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _policy_tables(policies, posteriors) -> dict[str, list[torch.Tensor]]:
    out = {}
    for label, pol in (policies or {}).items():
        if isinstance(pol, CausalLM):
            out[label] = [policy_log_probs(pol, p) for p in posteriors]
            continue
        tables = [torch.as_tensor(t).double().cpu() for t in pol]
        if len(tables) != len(posteriors) or any(t.shape != p.rewards.shape for t, p in zip(tables, posteriors)):
            raise ConfigError(f"policy {label!r}: give a CausalLM or one log q tensor [K] per posterior")
        out[label] = tables
    return out


def _check_inputs(posteriors, samples) -> None:
    if not posteriors or not all(isinstance(p, ExactPosterior) for p in posteriors):
        raise ConfigError("save_run needs a non-empty list of ExactPosterior (one per prompt)")
    if len({(float(p.beta), p.completion_ids.shape[1]) for p in posteriors}) != 1:
        raise ConfigError("all posteriors of a run must share beta and max_new_tokens")
    vocabulary = posteriors[0].vocabulary
    if any(not vocabulary.same_as(p.vocabulary) for p in posteriors[1:]):
        raise ConfigError("all posteriors of a run must share the prior's tokenizer")
    for label, s in (samples or {}).items():
        if getattr(s, "log_weights", None) is None and getattr(s, "rewards", None) is None:
            raise ConfigError(f"samples {label!r} need log_weights or rewards")
        if len(getattr(s, "log_weights", None) if getattr(s, "log_weights", None) is not None else s.rewards) == 0:
            raise EmptySamplesError(f"samples {label!r} are empty: draw at least one sample")


def _samples_tensors(s) -> dict[str, torch.Tensor]:
    from bayes_rlhf.diagnostics.inference_data import _completion_arrays

    out = {}
    for name in ("log_weights", "rewards", "prompt_index"):
        v = getattr(s, name, None)
        if v is not None:
            v = torch.as_tensor(v).detach().cpu().contiguous()
            out[name] = v.long() if name == "prompt_index" else v.double()
    ids, mask = _completion_arrays(s)
    if ids is not None and mask is not None:
        out["ids"], out["mask"] = torch.as_tensor(ids).long().cpu(), torch.as_tensor(mask).bool().cpu()
    return out


def save_run(run_dir: str | os.PathLike, posteriors: Sequence[ExactPosterior], *,
             policies: Mapping[str, Any] | None = None, histories: Mapping[str, Any] | None = None,
             samples: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None) -> Path:
    """Write a run directory that ``write_report`` and ``load_run`` read (layout: module docstring).

    Parameters
    ----------
    posteriors : list of ExactPosterior
        One per prompt; same beta, max_new_tokens and tokenizer.
    policies : {label: CausalLM or [log q [K] per posterior]}, optional
        Policies to compare with the posterior (scored exactly on each table).
    histories : {label: rows of dicts}, optional
        Training histories (``TrainingHistory`` or any rows of dicts).
    samples : {label: weighted samples}, optional
        Duck-typed: ``log_weights`` [n] and/or ``rewards`` [n], optional ``ids``/``mask``
        (directly or on ``.completions``) and ``log_z``.
    extra : dict, optional
        JSON-serialisable facts to keep in summary.json (e.g. timings, model name).
    """
    posteriors = list(posteriors)
    _check_inputs(posteriors, samples)
    run_dir = Path(run_dir)
    _check_run_dir(run_dir, histories, samples)
    tables = _policy_tables(policies, posteriors)
    from safetensors.torch import save_file

    run_dir.mkdir(parents=True, exist_ok=True)
    stale = _files_of(run_dir)  # an earlier run's tables and histories: removed if this one does not rewrite them
    (run_dir / "summary.json").unlink(missing_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".run.", dir=run_dir))
    try:
        posteriors[0].vocabulary.tokenizer.save_pretrained(tmp / "tokenizer")
        for i, p in enumerate(posteriors):
            t = {"completion_ids": p.completion_ids, "mask": p.mask, "prior_log_probs": p.prior_log_probs,
                 "rewards": p.rewards}
            t.update({f"policy.{label}": lq[i] for label, lq in tables.items()})
            save_file({k: v.contiguous() for k, v in t.items()}, tmp / f"posterior_{i}.safetensors",
                      metadata={"prompt": p.prompt, "beta": repr(float(p.beta))})
        hist_files = {}
        for label, h in (histories or {}).items():
            name = f"history_{_label(label)}.json"
            rows = [{k: (float(v) if isinstance(v, torch.Tensor) else v) for k, v in r.items()}
                    for r in _history_rows(h)]
            (tmp / name).write_text(json.dumps(json_safe(rows)))
            hist_files[label] = name
        sample_info = {}
        for label, s in (samples or {}).items():
            name = f"samples_{_label(label)}.safetensors"
            tens = _samples_tensors(s)
            save_file(tens, tmp / name)
            lw = tens.get("log_weights", torch.zeros(len(tens["rewards"]), dtype=torch.float64))
            groups = prompt_groups(s, lw.numel())
            diags = [weight_diagnostics(lw[g]).as_dict() for g in groups]
            log_z = _float_list(getattr(s, "log_z", None), len(groups))
            sample_info[label] = {"file": name, "diagnostics": diags,
                                  "log_z": [d["log_z"] if math.isnan(z) else z for z, d in zip(log_z, diags)]}
        comparisons = {f"{label} [{i}]": compare(lq[i], p) for label, lq in tables.items()
                       for i, p in enumerate(posteriors)}
        first = lambda m: next(iter(m.values())) if m else None  # noqa: E731
        idata = to_inference_data(posteriors=posteriors, comparisons=comparisons or None,
                                  history=first(histories), samples=first(samples))
        save_inference_data(idata, tmp / "inference_data.nc")
        summary = _summary(posteriors, tables, hist_files, sample_info, comparisons, extra)
        _move_into(tmp, run_dir, summary, stale)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return run_dir


def _check_run_dir(run_dir: Path, histories, samples) -> None:
    """RunDirError, before anything is written: ``run_dir`` a file or under one, a folder of other files
    (not a run directory: saving would replace its tokenizer/ and mix the two), or two labels that would
    share one file name."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is a file; give a folder for the run directory")
    if under_a_file(run_dir):
        raise RunDirError(f"{run_dir} lies under a file; give a folder's path")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not (run_dir / "summary.json").is_file():
        raise RunDirError(f"{run_dir} holds files and is not a run directory (no summary.json): give a new or "
                          "empty folder, or an earlier run directory to replace")
    for kind, labels in (("history", histories or {}), ("samples", samples or {})):
        seen = {}
        for label in labels:
            name = _label(label)
            if name in seen:
                raise RunDirError(f"{kind} labels {seen[name]!r} and {label!r} would both be written as "
                                  f"{kind}_{name}: rename one")
            seen[name] = label


def _summary(posteriors, tables, hist_files, sample_info, comparisons, extra) -> dict:
    return json_safe({
        "format": RUN_FORMAT, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "beta": float(posteriors[0].beta), "max_new_tokens": int(posteriors[0].completion_ids.shape[1]),
        **posteriors[0].vocabulary.as_dict(),
        "posteriors": [{"prompt": p.prompt, "file": f"posterior_{i}.safetensors", "summary": p.summary()}
                       for i, p in enumerate(posteriors)],
        "policies": list(tables), "histories": hist_files, "samples": sample_info,
        "comparisons": {k: c.as_dict() for k, c in comparisons.items()}, "extra": dict(extra or {})})


def _files_of(run_dir: Path) -> list[str]:
    """The files the manifest of ``run_dir``'s summary.json lists ([] if it has none)."""
    try:
        return list(json.loads((run_dir / "summary.json").read_text()).get("files", {}))
    except (OSError, ValueError, AttributeError):
        return []


def _move_into(tmp: Path, run_dir: Path, summary: dict, stale: list[str]) -> None:
    manifest = {}
    for f in sorted(tmp.rglob("*")):
        if f.is_file():
            rel = f.relative_to(tmp).as_posix()
            manifest[rel] = {"size": f.stat().st_size, "sha256": _sha(f)}
    if (run_dir / "tokenizer").exists():
        shutil.rmtree(run_dir / "tokenizer")
    umask_permissions(tmp)
    for f in sorted(tmp.iterdir()):
        os.replace(f, run_dir / f.name)
    for rel in sorted(set(stale) - set(manifest)):
        if "/" not in rel and (run_dir / rel).is_file():
            (run_dir / rel).unlink()
    summary["files"] = manifest
    fd, tmp_summary = tempfile.mkstemp(prefix=".summary.", dir=run_dir)
    with os.fdopen(fd, "w") as fh:
        json.dump(summary, fh, indent=1)
    umask_permissions(Path(tmp_summary))
    os.replace(tmp_summary, run_dir / "summary.json")


def load_run(run_dir: str | os.PathLike, verify: bool = True) -> Run:
    """Read a run directory written by ``save_run``; ``RunDirError`` if missing or half-written.

    With ``verify`` every file in the manifest is checked for size and sha256.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is a file, not a directory" if run_dir.exists() else "does not exist"
        raise RunDirError(f"run directory {run_dir} {what}; give a directory written by "
                          "save_run (e.g. the --out folder of `bayes-rlhf demo`)")
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except FileNotFoundError:
        raise RunDirError(f"{run_dir} has no summary.json: it is not a run directory or its writing was "
                          "interrupted; write it again with save_run / `bayes-rlhf demo --out`") from None
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{run_dir / 'summary.json'} is not valid JSON ({exc}); write the run again") from None
    if not isinstance(summary, dict) or summary.get("format") != RUN_FORMAT:
        raise RunDirError(f"{run_dir / 'summary.json'} is not a {RUN_FORMAT} summary: give the --out folder of "
                          "`bayes-rlhf demo`, `exact` or `evaluate`, or the exact/ folder inside a `train` --out "
                          "(written with [evaluate] exact = true)")
    for rel, meta in summary.get("files", {}).items():
        f = run_dir / rel
        if not f.is_file() or f.stat().st_size != meta["size"] or (verify and _sha(f) != meta["sha256"]):
            raise RunDirError(f"{f} is missing or differs from what summary.json records: the run directory "
                              "is half-written or was changed; write it again")
    return _read_run(run_dir, summary)


def _read_run(run_dir: Path, summary: dict) -> Run:
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(run_dir / "tokenizer")
        vocabulary = Vocabulary(tok, summary["vocab_size"], summary["eos_token_id"], summary["pad_id"])
        posteriors, policies = [], {label: [] for label in summary["policies"]}
        for entry in summary["posteriors"]:
            t = load_file(run_dir / entry["file"])
            posteriors.append(ExactPosterior(entry["prompt"], t["completion_ids"], t["mask"], t["prior_log_probs"],
                                             t["rewards"], float(summary["beta"]), vocabulary=vocabulary))
            for label in policies:
                policies[label].append(t[f"policy.{label}"])
        histories = {k: json_restore(json.loads((run_dir / f).read_text()))  # nan / inf: floats again
                     for k, f in summary["histories"].items()}
        samples = {k: load_file(run_dir / v["file"]) for k, v in summary["samples"].items()}
    except (KeyError, OSError, ValueError) as exc:
        raise RunDirError(f"{run_dir} is not a complete {RUN_FORMAT} run directory ({exc!r}); "
                          "write it again with save_run") from exc
    return Run(run_dir, summary, posteriors, policies, histories, samples)
