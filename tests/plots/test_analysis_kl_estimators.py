"""analysis/kl_estimators.py runs end to end (small settings) and supports its claims."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ANALYSIS = Path(__file__).resolve().parents[2] / "analysis"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"analysis_{name}", ANALYSIS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kl_estimators_smoke(tmp_path):
    assert _load("kl_estimators").main(["--out", str(tmp_path), "--max-new-tokens", "2", "--betas", "4"]) == 0
    r = json.loads((tmp_path / "result.json").read_text())
    assert len(r["rows"]) == 4 and r["num_completions"] > 100
    # exact sums over the table: k1, k3 and per-token k3 are unbiased up to float64 rounding
    for name in ("k1", "k3", "k3 per token", "k1 per token"):
        assert r["max_abs_bias"][name] < 1e-12, name
    assert r["max_abs_bias"]["k2"] > 1e-3  # k2 = rho^2 / 2 is biased
    # k1 in the reward is the reverse-KL gradient; sequence k3 in the loss is the forward-KL gradient
    assert r["min_cos_reverse"]["k1 in reward"] == pytest.approx(1.0, abs=1e-9)
    assert r["min_cos_forward_k3_sequence"] == pytest.approx(1.0, abs=1e-9)
    assert r["min_cos_reverse"]["k3 in loss, per token"] < 1 - 1e-6
    assert (tmp_path / "kl_estimators.pdf").is_file() and (tmp_path / "kl_estimators.png").is_file()
