"""The SMC benchmark's own arithmetic (benchmarks/smc_shared.py, smc_report.py), on a tiny model.

The benchmark itself needs the peers' venv and SmolLM2; these pieces do not: the reference
estimator for the untruncated tasks (checked against enumeration), the hook's top-k truncation,
the error statistics and the equal-RMSE read-off.
"""

import math
import sys
from pathlib import Path

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.models.toy import tiny_lm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
smc_shared = pytest.importorskip("smc_shared")
smc_report = pytest.importorskip("smc_report")

PROMPT = "w3 w4"


def _bad(lm):
    bad = torch.zeros(lm.vocab_size, dtype=torch.bool)
    bad[[3, 5, 8, 11]] = True  # four ordinary words forbidden; EOS (2) allowed
    return bad


def test_constrained_is_reference_is_unbiased_for_both_tasks():
    lm = tiny_lm(vocab_size=16, seed=1)
    T, bad = 3, _bad(lm)
    exact = smc_shared.exact_log_z(lm, PROMPT, T, smc_shared.task_rewards(bad, lm.eos_token_id))
    g = torch.Generator().manual_seed(0)
    w_a, w_b = smc_shared.constrained_is_weights(lm, PROMPT, T, bad, 20000, g, chunk=4096)
    for task, w in (("A", w_a), ("B", w_b)):
        z = torch.exp(w)
        se = float(z.std() / math.sqrt(z.numel()))
        # the mean of the weights estimates Z; 4 SE of 20000 draws (fixed seed)
        assert abs(float(z.mean()) - math.exp(exact[task])) < 4 * se, task
    assert exact["B"] < exact["A"] < 0


def test_hook_truncates_like_our_top_k(tmp_path):
    lm = tiny_lm(vocab_size=16, seed=2)
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    shared = smc_shared.SharedModel(tmp_path)
    own = br.CausalLM(shared.model, shared.tokenizer, top_k=5).start(PROMPT)[1]
    shared.top_k = 5
    hooked = shared.causal_lm().start(PROMPT)[1]
    assert torch.equal(torch.isfinite(own), torch.isfinite(hooked))
    assert int(torch.isfinite(hooked).sum()) == 5
    assert torch.allclose(own[torch.isfinite(own)], hooked[torch.isfinite(hooked)])
    assert shared.positions == 2 * 3 and shared.forwards == 2  # two prompt passes of 3 ids (BOS w3 w4)


def test_log_mean_z_and_rmse():
    m, se = smc_shared.log_mean_z([math.log(1.0), math.log(3.0)])
    assert m == pytest.approx(math.log(2.0))
    assert se == pytest.approx(math.sqrt(2) / 2 / math.sqrt(2))  # sd(Z/mean) = sd([0.5, 1.5]) = 0.707
    out = smc_shared.rmse_with_se([-1.0, -3.0, -math.inf], -2.0)
    assert out["failures"] == 1 and out["repeats"] == 3
    assert out["rmse"] == pytest.approx(1.0) and out["bias"] == pytest.approx(0.0)


def test_equal_rmse_ratio_reads_the_curves():
    # ours: RMSE 1/sqrt(cost); the peer needs 4x the cost for the same RMSE
    ours = [{"seconds": c, "rmse": c ** -0.5, "failures": 0} for c in (1.0, 4.0, 16.0)]
    peer = [{"seconds": 4 * c, "rmse": c ** -0.5, "failures": 0} for c in (1.0, 4.0, 16.0)]
    r = smc_report.ratio(ours, peer, "seconds")
    assert r["kind"] == "interpolated"
    assert r["ratio"] == pytest.approx(4.0) and r["min"] == pytest.approx(4.0) and r["max"] == pytest.approx(4.0)
    # a point with a failure is not on the curve
    failed = [dict(p, failures=1) if p["seconds"] == 1.0 else p for p in ours]
    assert smc_report.frontier(failed, "seconds") == [(4.0, 0.5), (16.0, 0.25)]
    # no overlap: our cheapest point beats the peer's best -> a lower bound
    far = [{"seconds": 100 * c, "rmse": 2 * c ** -0.5 + 1, "failures": 0} for c in (1.0, 4.0)]
    b = smc_report.ratio(ours, far, "seconds")
    assert b["kind"] == "lower_bound" and b["ratio"] == pytest.approx(400.0)


smc_bench = pytest.importorskip("smc")


def test_grid_options_repeats_and_caps():
    args = smc_bench.parse(["--repeats", "6", "--repeats-at", "2:12,8:10", "--peer-repeats-at", "128:4",
                            "--max-n", "genlm-awrs@B=8,llamppl-masked=32"])
    assert smc_bench.repeats_at(args, "ours-constrained", 2) == 12
    assert smc_bench.repeats_at(args, "ours-constrained", 32) == 6
    assert smc_bench.repeats_at(args, "genlm-bootstrap", 2) == 6  # ours' overrides are not the peers'
    assert smc_bench.repeats_at(args, "genlm-bootstrap", 128) == 4
    assert smc_bench.max_n(args, "genlm-awrs", "B-top16") == 8  # the base task names both variants
    assert smc_bench.max_n(args, "genlm-awrs", "A") == math.inf
    assert smc_bench.max_n(args, "llamppl-masked", "A-top16") == 32
    with pytest.raises(SystemExit):
        smc_bench.parse(["--max-n", "nobody=8"])  # an unknown sampler name
    with pytest.raises(SystemExit):
        smc_bench.parse(["--repeats-at", "8:1"])  # fewer than 2 runs give no RMSE SE


def _config(**kw):
    base = {"prompt": "p", "T": 4, "top_k": 16, "particles": [2, 8, 128], "peer_particles": [8, 32],
            "repeats": 5, "tasks": ["A"], "reference_runs": 8, "reference_factor": 16,
            "forbidden_tokens": 10, "vocab": 100}
    return {**base, **kw}


def test_reuse_references_only_when_their_config_matches(tmp_path):
    old = {"config": _config(), "exact": {"log_z": {"A": -1.0}}, "reference": {"A": {"log_z": -1.5}},
           "reference_seconds": 700.0, "git": "abc"}
    path = tmp_path / "old.json"
    path.write_text(__import__("json").dumps(old))
    # another N grid and repeats, the same largest N: both references reused
    data = {}
    smc_shared.reuse_references(path, _config(particles=[4, 128], repeats=7), data)
    assert data["exact"] == old["exact"] and data["reference"] == old["reference"]
    assert data["references_from"]["git"] == "abc"
    # a larger largest N needs more reference particles: the sampled reference is recomputed
    data = {}
    smc_shared.reuse_references(path, _config(peer_particles=[8, 256]), data)
    assert "exact" in data and "reference" not in data
    # another top_k changes the exact reference only
    data = {}
    smc_shared.reuse_references(path, _config(top_k=8), data)
    assert "exact" not in data and "reference" in data


def test_equal_rmse_ratio_with_a_one_point_frontier():
    ours = [{"seconds": c, "rmse": c ** -0.5, "failures": 0} for c in (1.0, 4.0, 16.0)]
    # the peer's dearer point is less accurate than its cheaper one: its frontier is one point,
    # RMSE 0.5, where our curve costs 4; the peer pays 12 there
    peer = [{"seconds": 12.0, "rmse": 0.5, "failures": 0}, {"seconds": 30.0, "rmse": 0.6, "failures": 0}]
    r = smc_report.ratio(ours, peer, "seconds")
    assert r["kind"] == "interpolated" and r["ratio"] == pytest.approx(3.0)
    assert r["rmse_range"] == [pytest.approx(0.5), pytest.approx(0.5)]
    # outside our range it stays a bound
    far = [{"seconds": 12.0, "rmse": 2.0, "failures": 0}]
    assert smc_report.ratio(ours, far, "seconds")["kind"] == "lower_bound"
