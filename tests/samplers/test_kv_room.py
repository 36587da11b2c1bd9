"""KV caches with room for the next tokens: the same numbers as transformers' concatenating cache."""

from __future__ import annotations

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.models.toy import tiny_lm
from bayes_rlhf.samplers import SMC, PrefixPotential, SMCConfig, smc
from bayes_rlhf.samplers._kv_room import _RoomLayer, with_room
from tests.conftest import first_word_reward

PROMPT = "w1 w2"


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def lm(request):
    return tiny_lm(request.param, vocab_size=8, seed=0)


def test_steps_write_in_place_and_match_the_plain_cache(lm):
    plain, logp = lm.start([PROMPT, "w3"], 2)
    roomy = with_room(plain, 3)
    assert all(type(layer) is _RoomLayer for layer in roomy.cache.layers)
    toks = torch.tensor([3, 4, 5, 6])
    a, lp_a = lm.step(plain, toks)
    b, lp_b = lm.step(roomy, toks)
    assert torch.equal(lp_a, lp_b)
    layer = b.cache.layers[0]
    assert layer.keys.data_ptr() == layer._bufs[0].data_ptr()  # the new key went into the buffer: no copy
    # the state is a value: stepping `roomy` again (another token) must not clobber `b`
    c, lp_c = lm.step(roomy, torch.tensor([7, 7, 7, 7]))
    assert torch.equal(lp_c, lm.step(plain, torch.tensor([7, 7, 7, 7]))[1])
    assert torch.equal(lm.step(b, toks)[1], lm.step(a, toks)[1])
    # resampling keeps the room: rows gathered into new buffers, the next step writes in place again
    idx = torch.tensor([3, 3, 0, 1])
    d, lp_d = lm.step(b.reindex(idx), toks)
    assert torch.equal(lp_d, lm.step(a.reindex(idx), toks)[1])
    assert type(d.cache.layers[0]) is _RoomLayer and d.cache.layers[0]._bufs is not None


def test_no_room_leaves_the_state(lm):
    state, _ = lm.start(PROMPT, 2)
    assert with_room(state, 0) is state


@pytest.mark.parametrize("compact", [0.0, 0.25, 1.0])
def test_smc_gives_the_same_run_with_and_without_room(lm, monkeypatch, compact):
    target = br.Target(prior=lm, reward=first_word_reward(), beta=1.0, max_new_tokens=5)

    def run():
        return smc(target, [PROMPT, "w3"], 8, twist=PrefixPotential(first_word_reward()), ess_threshold=1.0,
                   compact_threshold=compact, generator=torch.Generator().manual_seed(0))

    roomy = run()
    state = SMC(target, [PROMPT], SMCConfig(4)).init()
    assert type(state.prior_state.cache.layers[0]) is _RoomLayer  # SMC's rows have room for T tokens
    monkeypatch.setattr("bayes_rlhf.samplers._live_rows.with_room", lambda state, room: state)
    plain = run()
    assert int(roomy.history.num_resampling_steps.sum()) > 0
    assert torch.equal(roomy.ids, plain.ids)
    assert torch.allclose(roomy.log_weights, plain.log_weights, atol=1e-12, rtol=0)
    assert torch.allclose(roomy.log_z, plain.log_z, atol=1e-12, rtol=0)
