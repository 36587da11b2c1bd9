"""The bayes-rlhf command: demo and exact write their outputs; bad input writes nothing."""

import json
import subprocess
import sys

import pytest

from bayes_rlhf.cli import main


def test_demo_writes_summary(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "log Z" in text and "the movie was" in text
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["posteriors"]) == 3
    for p in summary["posteriors"]:
        s = p["summary"]
        assert s["posterior_mean_reward"] > s["prior_mean_reward"] and s["kl_posterior_prior"] > 0
    assert (out / "top_completions.csv").read_text().startswith("prompt,ranked_by")
    # the report, its figures and the InferenceData file
    html = (out / "report.html").read_text()
    assert "<html" in html.lower() and list((out / "figures").glob("*.pdf"))
    for fig in ("frontier_0", "training_rloo", "weights", "log_z_particles", "tokens_0_0", "rewards_0"):
        assert (out / "figures" / f"{fig}.png").exists(), fig
    import arviz as az

    assert az.from_netcdf(out / "inference_data.nc").groups()
    assert not list(tmp_path.glob(".demo*")) and not list(out.glob(".run.*"))  # no temporaries


def test_exact_command(tmp_path, capsys):
    out = tmp_path / "exact"
    code = main(["exact", "--prompt", "the food is", "--reward", "contains:great", "--beta", "0.5",
                 "--max-new-tokens", "3", "--out", str(out)])
    assert code == 0 and "the food is" in capsys.readouterr().out
    s = json.loads((out / "summary.json").read_text())["posteriors"][0]["summary"]
    assert s["beta"] == 0.5 and s["num_completions"] > 1000
    assert main(["report", str(out)]) == 0 and (out / "report.html").exists()  # a run directory


@pytest.mark.parametrize("args, message", [
    (["--beta", "0"], "beta"),
    (["--beta", "nan"], "beta"),
    (["--max-new-tokens", "0"], "max_new_tokens"),
    (["--model", "/no/such/dir"], "does not exist"),
    (["--max-new-tokens", "9"], "max_completions"),
    (["--reward", "nonsense"], "unknown reward"),
])
def test_bad_input_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "never"
    code = main(["exact", "--prompt", "the movie was", "--out", str(out), *args])
    assert code == 2 and message in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_help_has_examples():
    for cmd in ("demo", "exact"):
        res = subprocess.run([sys.executable, "-m", "bayes_rlhf.cli", cmd, "--help"], capture_output=True, text=True)
        assert res.returncode == 0 and "example" in res.stdout
