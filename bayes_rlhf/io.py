"""Output helpers shared by every writer: atomic directories, JSON (replaced atomically), CSV, and
the rule every command that writes a folder follows (``claim_out``).

The rule, checked before any work::

    out cannot be created (a parent is a file, no permission)     -> OutputDirError
    out is missing or empty                                        -> write it
    out/run.json names this command and these settings             -> the same run: replace it
                                                                      (train: resume in place)
    anything else (another command, other settings, other files)   -> OutputDirError saying what is
                                                                      there, unless overwrite=True
A refused folder is left byte for byte as it was; a replaced one is swapped in only once the
new output is complete (``OutFolder.writing``).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from bayes_rlhf.errors import OutputDirError

MARKER = "run.json"
MARKER_FORMAT = "bayes_rlhf.command/1"


def umask_permissions(root: Path) -> None:
    """Give ``root`` and everything under it the modes a plain mkdir/open would (mkdtemp and
    mkstemp make them private, and a published directory should not be)."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [root, *root.rglob("*")]:
        p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)


@contextmanager
def atomic_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces ``out`` only if the block finishes."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp.", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    swap_in(tmp, out)


def swap_in(tmp: Path, out: Path) -> None:
    """Make the finished directory ``tmp`` the directory ``out`` (an old ``out`` is removed)."""
    umask_permissions(tmp)
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)


def under_a_file(path: str | os.PathLike) -> bool:
    """Whether some folder above ``path`` exists as a file (so ``path`` can never be created)."""
    return any(p.exists() and not p.is_dir() for p in Path(path).parents)


_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def json_restore(obj):
    """``json_safe`` undone: the strings 'nan', 'inf' and '-inf' it wrote for floats are floats again."""
    if isinstance(obj, str):
        return _NON_FINITE.get(obj, obj)
    if isinstance(obj, dict):
        return {k: json_restore(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_restore(v) for v in obj]
    return obj


def json_safe(obj):
    """``obj`` with NaN and +-inf floats replaced by their strings (valid JSON for any reader)."""
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return str(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj) -> None:
    """JSON with NaN/inf written as strings (see ``json_safe``), replaced atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(json_safe(obj), indent=2) + "\n")
    os.replace(tmp, path)


def write_csv(path: str | os.PathLike, rows: Sequence[dict]) -> None:
    if not rows:
        Path(path).write_text("")
        return
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def check_creatable(out: str | os.PathLike) -> Path:
    """``out`` as a Path; OutputDirError now, before any work, if it cannot be a writable folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"--out {out} is a file, not a folder; give a folder path")
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputDirError(f"cannot create --out {out}: {parent} is a file, not a folder; give another path")
    for d in (parent, out) if out.is_dir() else (parent,):
        if not os.access(d, os.W_OK | os.X_OK):
            raise OutputDirError(f"cannot write --out {out}: no write permission in {d}; give another path")
    return out


def _flat(settings: Mapping, prefix: str = "") -> dict:
    """Nested settings as one level of JSON-safe values: {"target": {"beta": 1}} -> {"target.beta": 1}."""
    out = {}
    for k, v in settings.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.loads(json.dumps(json_safe(v), default=str))
    return out


def _read_marker(out: Path) -> dict | None:
    try:
        marker = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(marker, dict) and marker.get("format") == MARKER_FORMAT and isinstance(marker.get("settings"), dict)
    return marker if ok else None


def _describe(out: Path, entries: list[str]) -> str:
    """What a folder without a valid marker holds, in words."""
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        summary = None
    if isinstance(summary, dict) and summary.get("format"):
        return f"a run directory ({summary['format']}) written without {MARKER}, e.g. by save_run"
    listed = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    return f"{len(entries)} file(s) not written by bayes-rlhf ({listed})"


@dataclass(frozen=True)
class OutFolder:
    """The verdict of ``claim_out``: where to write and how.

    ``mode`` is "new" (missing or empty), "same" (this command's run with these settings) or
    "replace" (something else, which ``overwrite=True`` lets this run replace).
    """

    path: Path
    command: str
    settings: dict
    mode: str

    @property
    def resume(self) -> bool:
        return self.mode == "same"

    def _marker(self) -> dict:
        return {"format": MARKER_FORMAT, "command": self.command, "settings": self.settings}

    @property
    def in_place_dir(self) -> Path:
        """Where ``writing(in_place=True)`` writes: ``path``, or in "replace" mode a fixed sibling
        (``.NAME.new``) that every process of a multi-process run can name."""
        return self.path.with_name(f".{self.path.name}.new") if self.mode == "replace" else self.path

    @contextmanager
    def writing(self, in_place: bool = False, main: bool = True) -> Iterator[Path]:
        """Yield the folder to write into; the marker is written there too.

        By default a temporary sibling that replaces ``path`` only if the block finishes.
        ``in_place`` writes into ``path`` itself, so that what is written survives an interruption
        (train: checkpoints that the same command resumes); in "replace" mode it writes into
        ``in_place_dir`` and swaps that in at the end, so the old folder stays whole until then.
        Processes other than the ``main`` one write nothing here.
        """
        if not in_place:
            with atomic_dir(self.path) as tmp:
                yield tmp
                write_json(tmp / MARKER, self._marker())
            return
        d = self.in_place_dir
        if main and self.mode == "replace":
            shutil.rmtree(d, ignore_errors=True)  # a stale one of an interrupted --overwrite
        if main:
            d.mkdir(parents=True, exist_ok=True)
            if self.mode != "same":
                write_json(d / MARKER, self._marker())
        try:
            yield d
        except BaseException:
            if main and self.mode == "replace":
                shutil.rmtree(d, ignore_errors=True)
            raise
        if main and self.mode == "replace":
            swap_in(d, self.path)


def claim_out(out: str | os.PathLike, command: str, settings: Mapping, *, overwrite: bool = False,
              defaults: Mapping | None = None) -> OutFolder:
    """Check, before any work, that ``command`` with ``settings`` may write the folder ``out``.

    Parameters
    ----------
    out : path
        The output folder.
    command : str
        The command's name ("demo", "exact", "train", "evaluate").
    settings : dict
        What determines the command's output (nested dicts allowed); a folder written by the same
        command with equal settings is the same run.
    overwrite : bool
        Let this run replace a folder that holds something else (the CLI's ``--overwrite``).
    defaults : dict, optional
        Flattened setting -> value: a setting the folder's marker lacks (added in a later version)
        matches when the current value is this default.

    Returns
    -------
    OutFolder
        ``writing()`` on it yields where to write. OutputDirError if ``out`` cannot be created or
        holds something else and ``overwrite`` is False; nothing is written either way.
    """
    path = check_creatable(out)
    settings, defaults = _flat(settings), _flat(defaults or {})
    entries = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    if not entries:
        return OutFolder(path, command, settings, "new")
    marker = _read_marker(path)
    if marker is None:
        what = _describe(path, entries)
    elif marker.get("command") != command:
        what = f"the output of `bayes-rlhf {marker.get('command')}`"
    else:
        old = marker["settings"]
        diff = sorted(k for k in set(old) | set(settings)
                      if not (old.get(k) == settings.get(k)
                              or (k not in old and k in defaults and defaults[k] == settings.get(k))))
        if not diff:
            return OutFolder(path, command, settings, "same")
        shown = ", ".join(f"{k} {old.get(k)!r} -> {settings.get(k)!r}" for k in diff[:4])
        what = f"a `bayes-rlhf {command}` run with other settings ({shown}{', ...' if len(diff) > 4 else ''})"
    if overwrite:
        return OutFolder(path, command, settings, "replace")
    raise OutputDirError(f"--out {path} already holds {what}; choose another --out, or pass --overwrite "
                         "to replace it")
