"""SMC with finished particles' KV-cache rows dropped: same results, fewer rows stepped.

The models here raise the EOS logit so that particles end at every step (a completion of
T = 5 tokens ends early with prior probability 0.8 to 0.97), which is where compaction matters.
"""

from __future__ import annotations

import math

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.models.toy import tiny_lm
from bayes_rlhf.samplers import SMC, PrefixPotential, SMCConfig, smc
from tests.conftest import first_word_reward

PROMPTS = ["w1 w2", "w3"]
THRESHOLDS = (0.0, 0.25, 1.0)
KINDS = ("bootstrap", "prefix_potential", "twisted", "lm_proposal", "exact_proposal")


def eos_heavy_lm(arch: str, seed: int, boost: float = 2.0):
    """A tiny LM (vocab 8) whose output layer adds ``boost`` to the EOS logit (a bias on the head)."""
    lm = tiny_lm(arch, vocab_size=8, seed=seed)
    head = lm.model.get_output_embeddings()
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True, dtype=head.weight.dtype)
    biased.weight = head.weight  # shared: the GPT-2 embedding stays tied
    with torch.no_grad():
        biased.bias.zero_()
        biased.bias[lm.eos_token_id] = boost
    lm.model.set_output_embeddings(biased)
    return lm


@pytest.fixture(scope="module", params=[("gpt2", 0), ("llama", 1)], ids=["gpt2", "llama"])
def setting(request):
    arch, seed = request.param
    target = br.Target(prior=eos_heavy_lm(arch, seed), reward=first_word_reward(), beta=1.0, max_new_tokens=5)
    posts = [br.exact_posterior(target, p) for p in PROMPTS]
    proposal = eos_heavy_lm(arch, seed + 10, boost=1.5)  # same tokenizer, another model
    return target, posts, proposal


def _kwargs(kind, posts, proposal):
    return {"bootstrap": {}, "prefix_potential": {"twist": PrefixPotential(first_word_reward())},
            "twisted": {"proposal": "twisted", "twist": PrefixPotential(first_word_reward())},
            "lm_proposal": {"proposal": proposal, "twist": posts},
            "exact_proposal": {"proposal": posts}}[kind]


def _early_end_fraction(ws):
    return float((ws.mask.sum(-1) < ws.mask.shape[1]).double().mean())


@pytest.mark.parametrize("ess_threshold", [0.5, 1.0])
@pytest.mark.parametrize("kind", KINDS)
def test_every_threshold_gives_the_same_result(setting, kind, ess_threshold):
    # ess_threshold 1 resamples whenever weights differ (the compact state is re-indexed by
    # resampling); 0.5 resamples rarely, so rows are dropped by the threshold rule itself.
    target, posts, proposal = setting
    runs = {th: smc(target, PROMPTS, 16, ess_threshold=ess_threshold, compact_threshold=th,
                    generator=torch.Generator().manual_seed(3), **_kwargs(kind, posts, proposal))
            for th in THRESHOLDS}
    ref = runs[1.0]
    assert _early_end_fraction(ref) > 0.5  # EOS is common: most particles end before T
    n, T = ref.ids.shape
    assert ref.info["model_rows"] % n == 0  # threshold 1: every model step runs all n rows
    assert runs[0.0].info["model_rows"] <= runs[0.25].info["model_rows"] < ref.info["model_rows"]
    for th in (0.0, 0.25):
        ws = runs[th]
        # Draws and resampling are per particle and in the same order whatever rows the model holds,
        # so particles are equal exactly. The model's forward runs on a different batch size, which
        # may change float64 rounding in the last bit (1e-16 seen): weights and log Z agree to 1e-12.
        assert torch.equal(ws.ids, ref.ids) and torch.equal(ws.mask, ref.mask)
        assert torch.equal(ws.rewards, ref.rewards)
        assert torch.allclose(ws.log_weights, ref.log_weights, atol=1e-12, rtol=0, equal_nan=True)
        assert torch.allclose(ws.log_z, ref.log_z, atol=1e-12, rtol=0)
        assert torch.equal(ws.history.resampled, ref.history.resampled)
        assert torch.equal(ws.history.num_alive, ref.history.num_alive)
        assert torch.allclose(ws.history.ess, ref.history.ess, atol=1e-9, rtol=0)
        assert torch.allclose(ws.history.log_z, ref.history.log_z, atol=1e-12, rtol=0)
        assert ws.info["tokens"] == ref.info["tokens"]
    if ess_threshold == 1.0 and kind != "exact_proposal":  # exact proposal, no twist: weights may stay equal
        assert bool(ref.history.resampled.any())


def test_exact_twist_and_proposal_stay_exact_with_compaction(setting):
    target, posts, _ = setting
    ws = smc(target, PROMPTS, 16, proposal=posts, twist=posts, compact_threshold=0.0,
             generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ws.log_z, torch.tensor([p.log_z for p in posts], dtype=torch.float64), atol=1e-9, rtol=0)
    assert ws.info["model_rows"] < ws.ids.shape[0] * (ws.history.ess.shape[0] - 1)


def _record_rows(monkeypatch, lm):
    calls = []
    step = lm.step

    def counting_step(state, tokens):
        calls.append(int(tokens.shape[0]))
        assert state.batch_size == tokens.shape[0]
        return step(state, tokens)

    monkeypatch.setattr(lm, "step", counting_step)
    return calls


@pytest.mark.parametrize("threshold", [0.0, 0.25, 0.5, 1.0])
def test_prior_step_rows_shrink_to_the_live_count(setting, monkeypatch, threshold):
    # No resampling (ESS >= 1 > 1e-9 N), so a particle's row is its own from start to end and
    # the particles that go on after token t are those with a token at t + 1.
    target, _, proposal = setting
    prior_calls = _record_rows(monkeypatch, target.prior)
    q_calls = _record_rows(monkeypatch, proposal)
    ws = smc(target, PROMPTS, 16, proposal=proposal, ess_threshold=1e-9, compact_threshold=threshold,
             generator=torch.Generator().manual_seed(1))
    n = ws.ids.shape[0]
    going = [int(ws.mask[:, t + 1].sum()) for t in range(ws.ids.shape[1] - 1)]
    going = [g for g in going if g > 0]
    assert prior_calls == q_calls and len(prior_calls) == len(going)
    assert going[-1] < n / 2  # many particles ended early
    for rows, live in zip(prior_calls, going):
        assert live <= rows <= n
        assert rows - live <= threshold * rows  # finished rows never exceed the threshold
    if threshold == 0.0:
        assert prior_calls == going
    if threshold == 1.0:
        assert prior_calls == [n] * len(going)
    assert sum(prior_calls) == ws.info["model_rows"]


def test_compact_state_matches_a_fresh_forward_after_resampling(setting):
    # After compaction and resampling, every live particle's cached next-token log-probs (prior
    # and proposal) are those of its own prefix scored from scratch; finished particles hold no row.
    target, _, proposal = setting
    algo = SMC(target, PROMPTS, SMCConfig(8, ess_threshold=1.0, compact_threshold=0.0), proposal=proposal,
               twist=PrefixPotential(first_word_reward()))
    g = torch.Generator().manual_seed(2)
    state, resampled = algo.init(), False
    for _ in range(3):
        state, info = algo.step(state, generator=g)
        resampled |= bool(info["resampled"].any())
        assert state.prior_state.batch_size == state.proposal_state.batch_size == int(state.alive.sum())
    assert resampled and 0 < int(state.alive.sum()) < state.ids.shape[0]
    live = torch.nonzero(state.alive).squeeze(-1)
    assert bool(torch.isnan(state.prior_logp[~state.alive]).all())
    prompts = [algo.row_prompts[i] for i in live.tolist()]
    ids = state.ids[live, : state.t]
    for lm, logp in ((target.prior, state.prior_logp), (proposal, state.proposal_logp)):
        full = lm.token_log_probs(prompts, torch.cat([ids, torch.zeros_like(ids[:, :1])], 1),
                                  torch.ones(ids.shape[0], state.t + 1, dtype=torch.bool))
        assert torch.allclose(full[:, -1], logp[live, 0].double(), atol=1e-10)


def test_step_does_not_mutate_its_input(setting):
    target, _, proposal = setting
    algo = SMC(target, PROMPTS, SMCConfig(8, ess_threshold=1.0, compact_threshold=0.0), proposal=proposal)
    state = algo.init()
    for _ in range(2):
        state, _ = algo.step(state, generator=torch.Generator().manual_seed(4))
    rows_before, ids_before = state.rows.row.clone(), state.ids.clone()
    m_before = state.prior_state.batch_size
    a, _ = algo.step(state, generator=torch.Generator().manual_seed(7))
    b, _ = algo.step(state, generator=torch.Generator().manual_seed(7))  # same input, same seed: same result
    assert torch.equal(state.rows.row, rows_before) and torch.equal(state.ids, ids_before)
    assert state.prior_state.batch_size == m_before
    assert torch.equal(a.ids, b.ids) and torch.equal(a.log_w, b.log_w) and torch.equal(a.rows.row, b.rows.row)


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan, math.inf, True, "0.5", None])
def test_bad_compact_threshold(mild_target, bad):
    with pytest.raises(ConfigError, match="compact_threshold"):
        SMCConfig(4, compact_threshold=bad)
    with pytest.raises(ConfigError, match="compact_threshold"):
        smc(mild_target, "w1 w2", 4, compact_threshold=bad, generator=torch.Generator().manual_seed(0))
