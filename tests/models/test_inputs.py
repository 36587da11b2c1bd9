"""Inputs CausalLM cannot read faithfully are typed errors before any work: unknown words, prompts
past the context, pickle-only or corrupted checkpoints; and the cache argument of the forward."""

import inspect
import shutil

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.models.causal_lm import cache_argument, forward_with_cache
from bayes_rlhf.models.toy import tiny_lm, tiny_words, word_tokenizer


@pytest.mark.parametrize("prompt, unknown", [("The Movie Was", ["The", "Movie", "Was"]),
                                             ("the movie xyzzy was", ["xyzzy"])])
def test_unknown_words_are_named(default, prompt, unknown):
    lm, reward = default
    with pytest.raises(br.PromptError) as err:
        lm.encode_prompt(prompt)
    for w in unknown:
        assert repr(w) in str(err.value)
    assert "'movie'" not in str(err.value)
    target = br.Target(lm, reward, 1.0, 3)
    with pytest.raises(br.PromptError):
        br.exact_posterior(target, prompt)
    with pytest.raises(br.PromptError):
        br.smc(target, ["the movie was", prompt], 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(br.PromptError):
        lm.encode_completions(["great", "ZZZ"], 3)


def test_a_small_vocabulary_is_listed_in_the_error(default):
    # a new user typing a word the embedded model lacks ('film') should see which words it has
    lm, _ = default
    with pytest.raises(br.PromptError) as err:
        lm.encode_prompt("the film was")
    listed = str(err.value).rsplit(": ", 1)[1].split()
    assert "movie" in listed and "great" in listed and "film" not in listed
    assert lm.tokenizer.unk_token not in listed and lm.tokenizer.eos_token not in listed
    big = tiny_lm("gpt2", vocab_size=80, seed=0)  # past 64 words the message names no vocabulary
    with pytest.raises(br.PromptError) as err:
        big.encode_prompt("w0 zzz")
    assert "w1" not in str(err.value)


def test_known_words_and_literal_unknown_token_pass(default):
    lm, _ = default
    assert lm.encode_prompt("the movie was")[0] == lm.tokenizer.bos_token_id
    lm.encode_prompt(f"{lm.tokenizer.unk_token} the")  # the user spelled the token itself


def test_unknown_words_without_offsets():
    """A tokenizer that cannot return offsets still names the word (word-by-word fallback)."""
    tok = word_tokenizer(tiny_words(8))
    lm = tiny_lm("gpt2", vocab_size=8, seed=0)
    lm.tokenizer = tok
    calls = []
    real = tok.__call__

    def no_offsets(text, **kw):
        calls.append(kw)
        if kw.get("return_offsets_mapping"):
            raise NotImplementedError("no offsets")
        return real(text, **kw)

    lm.tokenizer = type("T", (), {"__call__": staticmethod(no_offsets), "unk_token_id": tok.unk_token_id,
                                  "unk_token": tok.unk_token, "bos_token_id": tok.bos_token_id})()
    with pytest.raises(br.PromptError, match="'nope'"):
        lm.encode_prompt("w0 nope w1")
    assert any(kw.get("return_offsets_mapping") for kw in calls)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_prompt_past_context_is_refused_before_work(arch, reward):
    lm = tiny_lm(arch, vocab_size=8, seed=0)  # context 64
    assert lm.context_length == 64
    prompt = " ".join(["w1"] * 60)  # 61 tokens with BOS
    target = br.Target(lm, reward, 1.0, 4)
    lm.check_prompt(prompt, 3)
    with pytest.raises(br.PromptError, match="past this model's context of 64.*at most 3"):
        target.check_prompt(prompt)
    with pytest.raises(br.PromptError, match="context"):
        br.exact_posterior(target, prompt)
    with pytest.raises(br.PromptError, match="context"):
        br.importance_sample(target, ["w0", prompt], 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(br.PromptError, match="context"):
        br.train_policy(target, ["w0", prompt], br.TrainerConfig(steps=1))


def test_cache_argument_matches_the_installed_forward(gpt2_lm, llama_lm):
    for lm in (gpt2_lm, llama_lm):
        params = inspect.signature(type(lm.model).forward).parameters
        assert cache_argument(lm.model) == ("cache" if "cache" in params else "past_key_values")


def test_cache_argument_sees_through_peft(gpt2_lm):
    peft = pytest.importorskip("peft")
    import copy

    model = peft.get_peft_model(copy.deepcopy(gpt2_lm.model),
                                peft.LoraConfig(r=2, target_modules="all-linear", lora_dropout=0.0))
    assert cache_argument(model) == cache_argument(gpt2_lm.model)
    ids = torch.tensor([[1, 3, 4]])
    att = torch.ones_like(ids)
    logits, cache = forward_with_cache(model, ids, att, torch.arange(3)[None])
    assert logits.shape == (1, 8) and cache is not None


def _saved(tmp_path, lm):
    d = tmp_path / "model"
    lm.save_pretrained(d)
    return d


def test_corrupted_safetensors_is_model_load_error(tmp_path, gpt2_lm):
    d = _saved(tmp_path, gpt2_lm)
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(br.ModelLoadError, match="model.safetensors|SafetensorError|header"):
        br.load_model(d)
    f.write_bytes(b"not a safetensors file")
    with pytest.raises(br.ModelLoadError):
        br.load_model(d)


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (shutil.copyfile, (__file__, self.path))


def test_pickle_only_checkpoint_is_refused_unexecuted(tmp_path, gpt2_lm):
    d = _saved(tmp_path, gpt2_lm)
    (d / "model.safetensors").unlink()
    marker = tmp_path / "executed"
    torch.save({"w": _Payload(str(marker))}, d / "pytorch_model.bin")
    with pytest.raises(br.ModelLoadError, match="pickle.*pytorch_model.bin"):
        br.load_model(d)
    assert not marker.exists()


def test_a_prompt_pass_runs_the_lm_head_at_its_last_position_only(gpt2_lm, llama_lm):
    # logits_to_keep=1 where the model takes it: the same last-position logits, the head run once per row
    for lm in (gpt2_lm, llama_lm):
        ids = torch.tensor([[1, 3, 4, 2], [0, 1, 5, 3]])
        att, pos = torch.ones_like(ids), torch.arange(4).expand(2, -1)
        head_rows = []
        hook = lm.model.get_output_embeddings().register_forward_hook(
            lambda m, args, out: head_rows.append(args[0].shape[:-1].numel()))
        try:
            with torch.no_grad():
                logits, _ = forward_with_cache(lm.model, ids, att, pos)
        finally:
            hook.remove()
        with torch.no_grad():
            full = lm.model(input_ids=ids, attention_mask=att, position_ids=pos).logits
        assert head_rows == [2]
        torch.testing.assert_close(logits, full[:, -1], rtol=1e-5, atol=1e-5)
