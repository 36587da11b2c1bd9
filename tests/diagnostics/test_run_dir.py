"""Run directories: save_run writes, load_run reads back, half-written ones are refused."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.diagnostics.run_dir import RunDirError, load_run, save_run
from bayes_rlhf.diagnostics.weights import EmptySamplesError
from bayes_rlhf.errors import ConfigError, TokenizerMismatchError
from bayes_rlhf.models.toy import tiny_lm
from bayes_rlhf.report import write_report
from tests.saved_runs import HISTORY, write_run
from tests.saved_runs import copy_run as _copy
from tests.saved_runs import policy_table as _policy_table
from tests.saved_runs import samples as _samples


@pytest.fixture(scope="module")
def run_dir(gpt2_post, tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("run"), gpt2_post)


def test_save_and_load_round_trip(run_dir, gpt2_post):
    run = load_run(run_dir)
    (post,) = run.posteriors
    assert torch.equal(post.completion_ids, gpt2_post.completion_ids)
    assert post.log_z == pytest.approx(gpt2_post.log_z, abs=1e-12) and post.prompt == gpt2_post.prompt
    assert post.completions[:20] == gpt2_post.completions[:20]  # decoded by the saved tokenizer
    assert torch.equal(post.token_posterior([3]), gpt2_post.token_posterior([3]))
    assert torch.equal(run.policies["tempered"][0], _policy_table(gpt2_post))
    assert run.histories["train"] == HISTORY
    assert torch.equal(run.samples["importance"]["log_weights"], _samples(gpt2_post).log_weights)
    assert run.summary["samples"]["importance"]["log_z"] == [0.3]
    assert run.summary["extra"] == {"seed": 0}
    assert set(run.summary["files"]) >= {"posterior_0.safetensors", "inference_data.nc", "history_train.json"}
    assert run.inference_data_path.is_file()


def test_missing_and_half_written_run_dirs(run_dir, tmp_path):
    with pytest.raises(RunDirError, match="does not exist"):
        load_run(tmp_path / "nope")
    d = _copy(run_dir, tmp_path / "no_summary")
    (d / "summary.json").unlink()  # writing was interrupted before the summary
    with pytest.raises(RunDirError, match="no summary.json"):
        write_report(d)
    d = _copy(run_dir, tmp_path / "truncated")
    f = d / "posterior_0.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(RunDirError, match="half-written"):
        load_run(d)
    d = _copy(run_dir, tmp_path / "deleted")
    (d / "inference_data.nc").unlink()
    with pytest.raises(RunDirError, match="missing"):
        load_run(d)
    d = _copy(run_dir, tmp_path / "garbage")
    (d / "summary.json").write_text("{not json")
    with pytest.raises(RunDirError, match="not valid JSON"):
        load_run(d)
    (d / "summary.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(RunDirError, match="summary"):
        load_run(d)


def test_save_run_bad_input(gpt2_post, tmp_path):
    with pytest.raises(ConfigError, match="non-empty"):
        save_run(tmp_path / "a", [])
    with pytest.raises(ConfigError, match="one log q"):
        save_run(tmp_path / "b", [gpt2_post], policies={"p": [torch.zeros(3)]})
    with pytest.raises(EmptySamplesError):
        save_run(tmp_path / "c", [gpt2_post], samples={"s": SimpleNamespace(log_weights=torch.zeros(0))})
    with pytest.raises(TokenizerMismatchError):
        save_run(tmp_path / "d", [gpt2_post], policies={"p": tiny_lm("gpt2", vocab_size=10)})
    assert not (tmp_path / "d" / "summary.json").exists()


def test_save_run_refuses_what_it_would_mix_or_lose(tmp_path, gpt2_lm, reward):
    # labels that share a file name once loaded back the other's history; a user's folder lost its
    # tokenizer/; an earlier run's extra posterior stayed beside the new run's
    target = br.Target(gpt2_lm, reward, 1.0, 2)
    posts = [br.exact_posterior(target, p) for p in ("w1", "w2")]
    with pytest.raises(RunDirError, match="'run a' and 'run_a'"):
        br.save_run(tmp_path / "r", posts, histories={"run a": [{"loss": 1.0}], "run_a": [{"loss": 2.0}]})
    mine = tmp_path / "mine"
    (mine / "tokenizer").mkdir(parents=True)
    (mine / "tokenizer" / "notes.txt").write_text("x")
    with pytest.raises(RunDirError, match="not a run directory"):
        br.save_run(mine, posts)
    (tmp_path / "afile").write_text("x")
    for bad in (tmp_path / "afile", tmp_path / "afile" / "r"):
        with pytest.raises(RunDirError, match="file"):
            br.save_run(bad, posts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "mine"]
    br.save_run(tmp_path / "r", posts, histories={"a": [{"loss": 1.0}]})
    br.save_run(tmp_path / "r", posts[:1])  # an earlier run directory is replaced, its extra files removed
    assert not (tmp_path / "r" / "posterior_1.safetensors").exists()
    assert not (tmp_path / "r" / "history_a.json").exists()
    assert len(br.load_run(tmp_path / "r").posteriors) == 1


def test_history_values_that_are_not_finite_come_back_as_floats(tmp_path, gpt2_lm, reward):
    import math

    post = br.exact_posterior(br.Target(gpt2_lm, reward, 1.0, 2), "w1")
    save_run(tmp_path / "r", [post], histories={"a": [{"step": 1, "kl": math.nan, "ratio": math.inf}]})
    row = load_run(tmp_path / "r").histories["a"][0]
    assert math.isnan(row["kl"]) and row["ratio"] == math.inf
