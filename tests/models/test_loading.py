"""models/loading.py: what a model name means (local path or hub id) before anything is read."""

import pytest

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
