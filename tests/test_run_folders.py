"""--out folders (bayes_rlhf.io.claim_out): another run is refused and left byte for byte as it was;
the same run is replaced (train: resumed); --overwrite swaps a new run in once it is complete."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from bayes_rlhf.cli import main
from bayes_rlhf.errors import OutputDirError
from bayes_rlhf.io import MARKER, claim_out


def tree_hash(root: Path) -> str:
    """sha256 over every path (hidden ones too), its kind and its bytes under ``root``."""
    h = hashlib.sha256()
    if root.is_file():
        return hashlib.sha256(root.read_bytes()).hexdigest()
    for p in sorted(root.rglob("*")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(b"D" if p.is_dir() else b"F" + p.read_bytes())
    return h.hexdigest()


def refused(capsys, argv: list[str], folder: Path, match: str) -> None:
    """The CLI exits 2 with one error line naming ``match``, and ``folder`` is unchanged."""
    before = tree_hash(folder) if folder.exists() else None
    siblings = sorted(p.name for p in folder.parent.iterdir())
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("bayes-rlhf")]
    assert len(lines) == 1 and err.strip().endswith(lines[0]), err  # the last line; above it at most progress bars
    assert lines[0].startswith(f"bayes-rlhf {argv[0]}: error: ") and match in lines[0], err
    assert "Traceback" not in err
    assert (tree_hash(folder) if folder.exists() else None) == before
    assert sorted(p.name for p in folder.parent.iterdir()) == siblings  # no temporaries left beside it


# ---- claim_out ----------------------------------------------------------------------------------


def _marked(d: Path, command: str, settings: dict) -> Path:
    claim = claim_out(d, command, settings)
    with claim.writing() as tmp:
        (tmp / "result.txt").write_text(command)
    return d


def test_claim_verdicts(tmp_path):
    d = tmp_path / "run"
    assert claim_out(d, "exact", {"beta": 1.0}).mode == "new" and not d.exists()  # claiming writes nothing
    d.mkdir()
    assert claim_out(d, "exact", {"beta": 1.0}).mode == "new"  # an empty folder
    _marked(d, "exact", {"beta": 1.0, "nested": {"k": [1, 2]}})
    assert json.loads((d / MARKER).read_text())["settings"] == {"beta": 1.0, "nested.k": [1, 2]}
    assert claim_out(d, "exact", {"beta": 1.0, "nested": {"k": (1, 2)}}).mode == "same"
    with pytest.raises(OutputDirError, match=r"other settings \(beta 1.0 -> 2.0\).*--overwrite"):
        claim_out(d, "exact", {"beta": 2.0, "nested": {"k": [1, 2]}})
    with pytest.raises(OutputDirError, match="output of `bayes-rlhf exact`"):
        claim_out(d, "demo", {"beta": 1.0})
    assert claim_out(d, "demo", {"beta": 1.0}, overwrite=True).mode == "replace"
    # a setting the marker lacks (added later) matches at its default only
    assert claim_out(d, "exact", {"beta": 1.0, "nested": {"k": [1, 2]}, "new": 0},
                     defaults={"new": 0}).mode == "same"
    with pytest.raises(OutputDirError, match="new None -> 1"):
        claim_out(d, "exact", {"beta": 1.0, "nested": {"k": [1, 2]}, "new": 1}, defaults={"new": 0})


def test_claim_describes_folders_without_a_marker(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
        (d / name).write_text(name)
    with pytest.raises(OutputDirError, match=r"4 file\(s\) not written by bayes-rlhf \(a.txt, b.txt, c.txt, ...\)"):
        claim_out(d, "exact", {})
    (d / "summary.json").write_text(json.dumps({"format": "bayes_rlhf.run/1"}))
    with pytest.raises(OutputDirError, match=r"run directory \(bayes_rlhf.run/1\) written without run.json"):
        claim_out(d, "exact", {})
    (d / MARKER).write_text("{broken")
    with pytest.raises(OutputDirError, match="without run.json"):
        claim_out(d, "exact", {})


def test_claim_refuses_what_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputDirError, match="is a file, not a folder"):
        claim_out(tmp_path / "file", "exact", {})
    with pytest.raises(OutputDirError, match=f"cannot create --out .*: {tmp_path / 'file'} is a file"):
        claim_out(tmp_path / "file" / "deeper" / "out", "exact", {})


def test_writing_replaces_only_when_finished(tmp_path):
    d = _marked(tmp_path / "run", "exact", {"beta": 1.0})
    before = tree_hash(d)
    claim = claim_out(d, "exact", {"beta": 2.0}, overwrite=True)
    with pytest.raises(RuntimeError):
        with claim.writing() as tmp:
            (tmp / "partial.txt").write_text("half")
            raise RuntimeError("interrupted")
    assert tree_hash(d) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    with claim.writing() as tmp:
        assert tmp != d and tree_hash(d) == before  # the old run stays whole while the new one is written
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in d.iterdir()) == ["new.txt", MARKER]
    assert json.loads((d / MARKER).read_text())["settings"] == {"beta": 2.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_writing_in_place(tmp_path):
    d = tmp_path / "run"
    with claim_out(d, "train", {"lr": 1}).writing(in_place=True) as w:
        assert w == d and (d / MARKER).exists()  # written first: an interrupted run is recognised
        (w / "checkpoint").write_text("1")
    with claim_out(d, "train", {"lr": 1}).writing(in_place=True) as w:  # the same run resumes in place
        assert (w / "checkpoint").read_text() == "1"
    before = tree_hash(d)
    claim = claim_out(d, "train", {"lr": 2}, overwrite=True)
    with pytest.raises(KeyboardInterrupt):
        with claim.writing(in_place=True) as w:
            assert w == claim.in_place_dir != d
            raise KeyboardInterrupt
    assert tree_hash(d) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    with claim.writing(in_place=True) as w:
        (w / "fresh").write_text("2")
    assert sorted(p.name for p in d.iterdir()) == ["fresh", MARKER]
    with claim_out(d, "train", {"lr": 3}, overwrite=True).writing(in_place=True, main=False) as w:
        assert not w.exists()  # a non-main process of a multi-process run writes nothing itself
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert sorted(p.name for p in d.iterdir()) == ["fresh", MARKER]


# ---- the commands -------------------------------------------------------------------------------

EXACT = ["exact", "--prompt", "the food is", "--max-new-tokens", "2"]


@pytest.fixture(scope="module")
def exact_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exact") / "run"
    assert main([*EXACT, "--out", str(out)]) == 0
    return out


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_every_command_refuses_another_commands_folder(tmp_path, exact_run, capsys):
    d = _copy(exact_run, tmp_path / "run")
    policy = tmp_path / "policy"
    policy.mkdir()
    cfg = tmp_path / "run.toml"
    cfg.write_text('[target]\nprompts = ["the movie was"]\n')
    for argv in (["demo"], ["evaluate", "--policy", str(policy)], ["train", "--config", str(cfg)]):
        refused(capsys, [*argv, "--out", str(d)], d, "already holds the output of `bayes-rlhf exact`")
    refused(capsys, [*EXACT, "--beta", "0.5", "--out", str(d)], d, "other settings (beta 1.0 -> 0.5)")


def test_same_command_replaces_and_overwrite_swaps(tmp_path, exact_run, capsys):
    d = _copy(exact_run, tmp_path / "run")
    (d / "stale.txt").write_text("from before")
    assert main([*EXACT, "--out", str(d)]) == 0  # the same command again: its own output replaced
    assert not (d / "stale.txt").exists() and (d / "summary.json").exists()
    assert main([*EXACT, "--beta", "0.5", "--out", str(d), "--overwrite"]) == 0
    assert json.loads((d / MARKER).read_text())["settings"]["beta"] == 0.5
    summary = json.loads((d / "summary.json").read_text())
    assert summary["beta"] == 0.5 and summary["extra"]["command"] == "exact"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_foreign_folder_refused(tmp_path, capsys):
    d = tmp_path / "thesis"
    d.mkdir()
    (d / "chapter1.tex").write_text("precious")
    refused(capsys, [*EXACT, "--out", str(d)], d, "1 file(s) not written by bayes-rlhf (chapter1.tex)")
    f = d / "chapter1.tex"
    refused(capsys, [*EXACT, "--out", str(f)], f, f"--out {f} is a file, not a folder")


@pytest.mark.parametrize("argv", [["demo"], EXACT, ["evaluate", "--policy", "p"], ["train", "--config", "CFG"]])
def test_unwritable_out_refused_before_any_work(tmp_path, capsys, monkeypatch, argv):
    import importlib

    causal_lm = importlib.import_module("bayes_rlhf.models.causal_lm")
    default_model = importlib.import_module("bayes_rlhf.demo")

    def no_work(*a, **k):
        raise AssertionError("a model was loaded before --out was checked")

    monkeypatch.setattr(default_model, "default_model", no_work)
    monkeypatch.setattr(causal_lm, "load_model", no_work)
    cfg = tmp_path / "run.toml"
    cfg.write_text('[target]\nprompts = ["the movie was"]\n')
    (tmp_path / "file").write_text("x")
    argv = [a.replace("CFG", str(cfg)) for a in argv]
    refused(capsys, [*argv, "--out", str(tmp_path / "file" / "out")], tmp_path / "file",
            f"cannot create --out {tmp_path / 'file' / 'out'}: {tmp_path / 'file'} is a file")
