"""The bf16 autocast path of ``train_policy`` on CPU.

``rollout.autocast_for`` turns bf16 autocast on only on CUDA; here it is monkeypatched to
``torch.autocast("cpu", dtype=torch.bfloat16)`` so the differentiated forward really runs its matrix
products in bfloat16 (on a float32 copy of the tiny target: autocast leaves float64 alone). Checked:
each objective trains without dtype errors, the history stays finite, the exact KL to pi* falls,
and what reaches the objectives is float32/float64 with more than bf16 precision.
(That the accelerate backend keeps mixed_precision="no" for a CPU prior is in test_accelerate.py.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.models.toy import tiny_lm
from bayes_rlhf.variational import objectives, rollout, train_policy

from .conftest import word_reward

_FORWARD = rollout.forward  # the unpatched function, for reference passes without autocast


@pytest.fixture(scope="module")
def f32_target():
    """The ``small_target`` of conftest.py in float32 (the dtype bf16 autocast applies to)."""
    lm = tiny_lm("gpt2", vocab_size=6, seed=3, hidden=16, dtype=torch.float32)
    return br.Target(prior=lm, reward=word_reward(), beta=0.5, max_new_tokens=3)


@pytest.fixture(scope="module")
def f32_post(f32_target):
    return br.exact_posterior(f32_target, "w0")


def _on_bf16_grid(x: torch.Tensor) -> bool:
    """True when every value is exactly a bfloat16 number (what a bf16 log-softmax would give)."""
    return bool((x.to(torch.bfloat16).to(x.dtype) == x).all())


@pytest.fixture
def cpu_autocast(monkeypatch):
    """Autocast to bf16 on CPU; record each differentiated forward and every batch the objectives get."""
    seen = {"autocast": 0, "forward": [], "batches": []}

    def autocast_for(lm, bf16):
        if not bf16:
            return contextlib.nullcontext()
        seen["autocast"] += 1
        return torch.autocast("cpu", dtype=torch.bfloat16)

    def forward(lm, prompts, ids, mask, value_head=None, bf16=False, model=None):
        tok, values = _FORWARD(lm, prompts, ids, mask, value_head, bf16, model)
        # the same differentiated pass without autocast (a no-grad pass may take another route: scoring
        # runs the prompt through a KV cache, the training pass does not; they agree up to rounding)
        ref = _FORWARD(lm, prompts, ids, mask, None, False, model)[0].detach()
        seen["forward"].append((tok.detach(), ref, None if values is None else values.dtype))
        return tok, values

    monkeypatch.setattr(rollout, "autocast_for", autocast_for)
    monkeypatch.setattr(rollout, "forward", forward)
    for name, record in list(objectives.OBJECTIVES.items()):
        def spy(batch, settings, _fn=record.loss):
            seen["batches"].append(batch)
            return _fn(batch, settings)
        monkeypatch.setitem(objectives.OBJECTIVES, name, dataclasses.replace(record, loss=spy))
    return seen


@pytest.mark.parametrize("kw", [dict(objective="rloo"), dict(objective="ppo"), dict(objective="dpg"),
                                dict(objective="vargrad")], ids=lambda kw: kw["objective"])
def test_bf16_autocast_trains_each_objective(f32_target, f32_post, fast_config, cpu_autocast, kw):
    cfg = fast_config(steps=12, bf16=True, lr=1e-2, eval_every=12, **kw)
    policy, hist = train_policy(f32_target, "w0", cfg, evaluator=f32_post)
    steps = cfg.steps * cfg.inner_epochs
    assert cpu_autocast["autocast"] == steps and len(cpu_autocast["forward"]) == steps == len(cpu_autocast["batches"])
    for tok, ref, vdtype in cpu_autocast["forward"]:
        assert tok.dtype == torch.float32 and (vdtype is None or vdtype == torch.float32)
        # the pass really ran in bf16 (it differs from the float32 one) yet its log-probs are
        # float32 values, not rounded to bf16: bf16 products change logits by ~1e-2 relative, and
        # the tiny model's log-probs are O(1), so 0.1 nats bounds the difference
        assert not torch.equal(tok, ref) and float((tok - ref).abs().max()) < 0.1
        assert not _on_bf16_grid(tok[tok != 0])
    for b in cpu_autocast["batches"]:
        for name in ("logq", "old_logq", "prior_logp", "rewards", "values", "old_values", "log_z",
                     "proposal_log_probs"):
            t = getattr(b, name)
            assert t is None or t.dtype in (torch.float64, torch.float32), (name, t.dtype)
        assert b.logq.requires_grad and not _on_bf16_grid(b.logq[b.mask])
    if kw["objective"] == "ppo":
        assert all(b.values is not None and b.values.requires_grad for b in cpu_autocast["batches"])
    for row in hist.rows:
        for k, v in row.items():
            assert v is None or math.isfinite(v), (k, row)
    assert policy.dtype == torch.float32
    before = br.compare(f32_target.prior, f32_post).kl_q_posterior
    after = br.compare(policy, f32_post).kl_q_posterior
    # deterministic (fixed seed); 12 Adam steps at lr 1e-2 cut the 2.28-nat KL far more than bf16 noise
    assert after < 0.8 * before, (kw, before, after)
    assert hist.last["kl_q_posterior"] == pytest.approx(after, rel=1e-6)


def test_bf16_off_never_autocasts(f32_target, fast_config, cpu_autocast):
    train_policy(f32_target, "w0", fast_config(steps=2, bf16=False))
    assert cpu_autocast["autocast"] == 0
    assert all(torch.equal(tok, ref) for tok, ref, _ in cpu_autocast["forward"])
