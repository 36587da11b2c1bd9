"""CausalLM: the step primitive, re-indexing, batching across prompts, scoring, saving, errors."""

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.models.toy import tiny_lm


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_steps_match_full_forward(arch):
    lm = tiny_lm(arch, vocab_size=8, seed=2)
    ids = torch.tensor([[3, 4, 5], [6, 3, 2]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    state, logp = lm.start("w0", 2)
    stepped = [logp.gather(-1, ids[:, :1])]
    for t in range(1, 3):
        state, logp = lm.step(state, ids[:, t - 1])
        stepped.append(logp.gather(-1, ids[:, t:t + 1]))
    assert torch.allclose(torch.cat(stepped, 1), lm.score("w0", ids, mask), atol=1e-10)


def test_reindex_duplicates_rows_and_keeps_input(gpt2_lm):
    state, logp = gpt2_lm.start(["w0", "w1 w2"])  # two prompts of different lengths (left padding)
    s2, l2 = gpt2_lm.step(state, torch.tensor([3, 4]))
    rep = state.reindex(torch.tensor([1, 1, 0]))
    s3, l3 = gpt2_lm.step(rep, torch.tensor([4, 4, 3]))
    assert torch.allclose(l3[0], l2[1], atol=1e-12) and torch.allclose(l3[2], l2[0], atol=1e-12)
    # stepping did not change the state it was given
    s2b, l2b = gpt2_lm.step(state, torch.tensor([3, 4]))
    assert torch.allclose(l2, l2b, atol=1e-12)


def test_left_padded_batch_matches_single_prompts(gpt2_lm):
    _, both = gpt2_lm.start(["w0", "w1 w2 w3"])
    _, a = gpt2_lm.start("w0")
    _, b = gpt2_lm.start("w1 w2 w3")
    assert torch.allclose(both, torch.cat([a, b]), atol=1e-10)
    ids = torch.tensor([[3, 2, 0], [4, 5, 6]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    joint = gpt2_lm.score(["w0", "w1 w2 w3"], ids, mask)
    assert torch.allclose(joint[0], gpt2_lm.score("w0", ids[:1], mask[:1])[0], atol=1e-10)
    assert torch.allclose(joint[1], gpt2_lm.score("w1 w2 w3", ids[1:], mask[1:])[0], atol=1e-10)


def test_sample_semantics_and_reproducibility(gpt2_lm):
    a = gpt2_lm.sample(["w0", "w1"], 64, 5, generator=torch.Generator().manual_seed(0))
    b = gpt2_lm.sample(["w0", "w1"], 64, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.ids, b.ids) and a.ids.shape == (128, 5)
    assert a.prompt_index.tolist() == [0] * 64 + [1] * 64
    eos = gpt2_lm.eos_token_id
    for r, m in zip(a.ids.tolist(), a.mask.tolist()):
        toks = [t for t, k in zip(r, m) if k]
        assert eos not in toks[:-1] and (toks[-1] == eos or len(toks) == 5)
    # returned log-probs equal scoring
    prompts = ["w0" if i == 0 else "w1" for i in a.prompt_index.tolist()]
    assert torch.allclose(gpt2_lm.score(prompts, a.ids, a.mask).sum(-1), a.log_probs, atol=1e-9)


def test_top_k_renormalises(gpt2_lm):
    lm = gpt2_lm.with_top_k(2)
    _, logp = lm.start("w0")
    assert int(torch.isfinite(logp).sum()) == 2 and abs(float(logp.exp().sum()) - 1) < 1e-12
    with pytest.raises(br.ConfigError):
        gpt2_lm.with_top_k(0)


def test_save_and_reload_round_trip(tmp_path, gpt2_lm):
    from transformers import AutoModelForCausalLM

    out = gpt2_lm.save_pretrained(tmp_path / "ckpt")
    assert (out / "model.safetensors").exists()
    AutoModelForCausalLM.from_pretrained(out)  # plain transformers loads it
    lm2 = br.load_model(out, dtype=torch.float64)
    assert lm2.same_tokenizer(gpt2_lm)
    ids = torch.tensor([[3, 4, 2]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    assert torch.allclose(lm2.score("w0", ids, mask), gpt2_lm.score("w0", ids, mask), atol=1e-12)
    gpt2_lm.save_pretrained(out)  # overwriting an existing checkpoint works
    assert not list(tmp_path.glob(".ckpt*"))


def test_missing_path_and_empty_prompt():
    with pytest.raises(br.ModelLoadError, match="does not exist"):
        br.load_model("/no/such/model/dir")
    no_bos = tiny_lm("gpt2", vocab_size=8, add_bos=False)
    no_bos.tokenizer.bos_token = None
    with pytest.raises(br.PromptError, match="empty"):
        no_bos.encode_prompt("")
    with_bos = tiny_lm("gpt2", vocab_size=8, add_bos=False)
    assert with_bos.encode_prompt("") == [1]  # falls back to BOS


def test_encode_decode(gpt2_lm):
    ids, mask = gpt2_lm.encode_completions(["w0 w1", "w2 </s> w3", "w0 w0 w0 w0 w0"], 4)
    assert ids[1].tolist()[:2] == [5, 2] and mask.sum(-1).tolist() == [2, 2, 4]
    assert gpt2_lm.decode(ids, mask) == ["w0 w1", "w2", "w0 w0 w0 w0"]
