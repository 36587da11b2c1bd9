"""models/loading.py: what a model name means (local path or hub id) before anything is read."""

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.models.loading import load_pretrained, looks_like_hub_id


@pytest.mark.parametrize("name", ["gpt2", "HuggingFaceTB/SmolLM2-135M-Instruct", "Qwen/Qwen2.5-0.5B",
                                  "EleutherAI/pythia-70m-deduped"])
def test_hub_ids(name):
    assert looks_like_hub_id(name)


@pytest.mark.parametrize("name", ["/abs/dir", "./rel", "../up", "a/b/c", "runs/../x", "", "dir/"])
def test_paths(name):
    assert not looks_like_hub_id(name)


def test_an_owner_name_hub_id_reaches_transformers(monkeypatch):
    # 'owner/name' was read as a local path (it holds a '/') and refused as "does not exist", so no
    # hub model with an owner could be loaded by name, cached or not
    import transformers

    asked = []

    def fake(kind):
        def from_pretrained(name, **kwargs):
            asked.append((kind, name, kwargs.get("use_safetensors")))
            return kind
        return from_pretrained

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake("tokenizer"))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake("model"))
    assert load_pretrained("Qwen/Qwen2.5-0.5B") == ("tokenizer", "model")
    assert asked == [("tokenizer", "Qwen/Qwen2.5-0.5B", None), ("model", "Qwen/Qwen2.5-0.5B", True)]


def test_missing_hub_id_and_missing_path_say_which(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(br.ModelLoadError, match="no local path of that name exists either"):
        load_pretrained("no-such-owner-xyz/no-such-model")
    with pytest.raises(br.ModelLoadError, match="does not exist"):
        load_pretrained("./no/such/dir")


def test_loaded_weights_own_aligned_memory_and_stay_tied(tmp_path):
    """A reloaded checkpoint's weights are copied off the safetensors memory map (8-byte offsets) into
    64-byte-aligned memory, so its log-probabilities equal the saved policy's bit for bit on CPUs whose
    BLAS takes another path for unaligned operands; the tied output embedding is still the input one."""
    import torch

    from bayes_rlhf.models.default_model import default_lm
    from bayes_rlhf.models.loading import own_aligned

    lm = default_lm()
    lm.save_pretrained(tmp_path / "m")
    back = br.load_model(tmp_path / "m")
    for name, p in [*back.model.named_parameters(), *back.model.named_buffers()]:
        assert p.data_ptr() % 64 == 0, name
    assert back.model.get_output_embeddings().weight is back.model.get_input_embeddings().weight
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(back.model(ids).logits, lm.model(ids).logits)

    t = torch.zeros(9)[1:]  # a view 4 bytes into its storage: copied; an aligned tensor is left alone
    m = torch.nn.Linear(8, 1)
    m.weight.data = t.view(1, 8)
    keep = m.bias.data_ptr()
    own_aligned(m)
    assert m.weight.data_ptr() % 64 == 0 and m.bias.data_ptr() == keep


def test_save_pretrained_replaces_a_checkpoint_but_no_one_elses_files(tmp_path, monkeypatch):
    # it once swapped the whole folder in, deleting whatever else was there (notes, an eval run),
    # renamed a file out of the way, and could overwrite the prior a support.json names
    from bayes_rlhf.errors import OutputDirError
    from bayes_rlhf.models.toy import tiny_lm

    lm = tiny_lm("gpt2", vocab_size=8, seed=0)
    ckpt = tmp_path / "ckpt"
    lm.save_pretrained(ckpt)
    lm.save_pretrained(ckpt)  # an earlier checkpoint is replaced
    (ckpt / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match=r"not a checkpoint's \(notes.txt\)"):
        lm.save_pretrained(ckpt)
    assert (ckpt / "notes.txt").read_text() == "mine"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputDirError, match="is a file"):
        lm.save_pretrained(tmp_path / "afile")
    monkeypatch.chdir(tmp_path / "ckpt")
    with pytest.raises(OutputDirError, match="whole folder"):
        lm.save_pretrained(".")
    lm.save_pretrained(tmp_path / "prior")
    prior = br.load_model(str(tmp_path / "prior"), top_k=3)
    with pytest.raises(OutputDirError, match="holds the prior"):
        lm.with_support(prior).save_pretrained(prior.source)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "ckpt", "prior"]  # no temporaries left


@pytest.mark.parametrize("dtype", ["bogus", "fp16", "torch.float32", "int8", 3])
def test_a_dtype_that_is_not_one_is_a_model_load_error(tmp_path, dtype):
    from bayes_rlhf.errors import ModelLoadError
    from bayes_rlhf.models.toy import tiny_lm

    tiny_lm("gpt2", vocab_size=8, seed=0).save_pretrained(tmp_path / "m")
    with pytest.raises(ModelLoadError, match="dtype must be"):
        br.load_model(str(tmp_path / "m"), dtype=dtype)
    assert br.load_model(str(tmp_path / "m"), dtype="float64").dtype == torch.float64
