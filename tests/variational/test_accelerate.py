"""``use_accelerate``: one process through Hugging Face accelerate trains exactly as plain torch does
(same seed, same samples, same steps), and a missing accelerate is a ConfigError before any work."""

from __future__ import annotations

import sys

import pytest
import torch

from bayes_rlhf.errors import ConfigError
from bayes_rlhf.variational import TrainerConfig, train_policy
from bayes_rlhf.variational.distributed import AccelerateBackend, is_main_process

COLUMNS = ("objective", "mean_reward", "kl_prior", "entropy", "loss", "grad_norm", "reward_evals")


def _run(target, prompts, cfg, **kw):
    policy, hist = train_policy(target, prompts, cfg, **kw)
    params = torch.cat([p.detach().flatten() for p in policy.model.parameters()])
    return policy, hist, params


@pytest.mark.parametrize("kw", [dict(objective="rloo"), dict(objective="ppo"), dict(objective="vargrad"),
                                dict(objective="rloo", lora_rank=2)],
                         ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_one_process_matches_plain_torch(small_target, small_posts, fast_config, kw):
    pytest.importorskip("accelerate")
    if kw.get("lora_rank"):
        pytest.importorskip("peft")
    prompts = list(small_posts)
    _, h0, p0 = _run(small_target, prompts, fast_config(steps=4, eval_every=1, **kw), evaluator=small_posts)
    pol, h1, p1 = _run(small_target, prompts, fast_config(steps=4, eval_every=1, use_accelerate=True, **kw),
                       evaluator=small_posts)
    # one CPU process: the same samples and the same float ops in the same order, so the exact
    # KL trajectory and the final weights agree to float64 / float32 rounding
    assert h1.column("kl_q_posterior") == pytest.approx(h0.column("kl_q_posterior"), rel=1e-9, abs=1e-12)
    for col in COLUMNS:
        assert h1.column(col) == pytest.approx(h0.column(col), rel=1e-9, abs=1e-12), col
    torch.testing.assert_close(p1, p0, rtol=0, atol=1e-7)
    assert type(pol.model).__name__ == type(small_target.prior.model).__name__  # unwrapped
    assert not torch.equal(p1, torch.cat([p.detach().flatten() for p in small_target.prior.model.parameters()]))


def test_resume_without_accelerate_from_accelerate_checkpoint(small_target, fast_config, tmp_path):
    """use_accelerate is not in the fingerprint: a one-process run may switch and ends the same."""
    pytest.importorskip("accelerate")
    _, whole, p0 = _run(small_target, ["w0"], fast_config(steps=4))
    d = str(tmp_path / "ck")
    _run(small_target, ["w0"], fast_config(steps=2, checkpoint_dir=d, use_accelerate=True))
    _, rest, p1 = _run(small_target, ["w0"], fast_config(steps=4, checkpoint_dir=d))
    assert rest.column("loss") == pytest.approx(whole.column("loss"), rel=1e-9)
    torch.testing.assert_close(p1, p0, rtol=0, atol=1e-7)


def test_backend_on_cpu_is_one_plain_process(small_target):
    pytest.importorskip("accelerate")
    b = AccelerateBackend(TrainerConfig(use_accelerate=True, bf16=True), small_target.prior)
    assert (b.is_main, b.process_index, b.num_processes) == (True, 0, 1)
    assert b.accelerator.mixed_precision == "no"  # bf16 applies on CUDA only, as without accelerate
    assert b.place(small_target) is small_target and b.seed(7) == 7
    assert is_main_process()


def test_missing_accelerate_is_a_config_error_before_any_work(small_target, monkeypatch):
    monkeypatch.setitem(sys.modules, "accelerate", None)  # makes `import accelerate` fail
    calls = []
    monkeypatch.setattr(small_target.prior, "sample", lambda *a, **k: calls.append(a))
    with pytest.raises(ConfigError, match=r"pip install accelerate"):
        train_policy(small_target, ["w0"], TrainerConfig(steps=2, use_accelerate=True, progress=False))
    with pytest.raises(ConfigError, match="use_accelerate"):
        TrainerConfig(use_accelerate="yes")
    assert calls == []
