"""Loading checkpoints safely, and the record of a policy's support restriction.

    load_pretrained(name)          tokenizer + model from a directory or hub id; safetensors only
    own_aligned(module)            CPU tensors moved off a memory map into 64-byte-aligned memory
    write_support(dir, lm)         support.json beside a policy restricted to a prior's top-k support
    read_support(dir)              that record, or None

A policy trained against a top-k-truncated target lives on the prior's support S(prefix) (its
logits restricted to S and renormalised). ``support.json`` names the prior and k so that
``load_model(dir)`` gives back the same distribution::

    {"format": 1, "prior": "<path, hub id or 'default'>", "top_k": k}
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError

from bayes_rlhf.errors import ModelLoadError, OutputDirError

SUPPORT_FILE = "support.json"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # 'gpt2', 'owner/name'
_ALIGNMENT = 64  # bytes: what torch's CPU allocator gives every tensor it makes


def looks_like_hub_id(name: str) -> bool:
    """True for a name of a hub id's form ('gpt2', 'HuggingFaceTB/SmolLM2-135M', 'Qwen/Qwen2.5-0.5B'):
    one optional owner, no leading '.' or '/', no '..'. A path of that form that exists is still local."""
    return bool(_HUB_ID.fullmatch(name)) and ".." not in name


_DTYPE_NAMES = ("float32", "float64", "bfloat16", "float16")


def as_dtype(dtype):
    """A torch floating dtype from one or its name ("float32", "bfloat16", ...); None stays None."""
    if dtype is None or isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPE_NAMES:
        return getattr(torch, dtype)
    raise ModelLoadError(f"dtype must be None, a floating torch.dtype or one of {list(_DTYPE_NAMES)}, got {dtype!r}")


def load_pretrained(name: str, *, dtype=None, trust_remote_code: bool = False, **kwargs):
    """(tokenizer, model) from a local directory or a hub id; ModelLoadError when that fails.

    Weights are read from safetensors only (or a GGUF file named by ``gguf_file=``): a directory
    holding only pickles is refused before anything is read, since unpickling can run code.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hub_form = looks_like_hub_id(name)
    if not hub_form and not Path(name).exists():
        raise ModelLoadError(f"model path {name!r} does not exist; give an existing directory "
                             "holding config.json and weights, or a hub id such as 'gpt2'")
    dtype = as_dtype(dtype)
    if Path(name).is_dir():
        _check_weight_files(Path(name), kwargs.get("gguf_file"))
    if "gguf_file" not in kwargs:
        kwargs.setdefault("use_safetensors", True)  # never unpickle weights
    tok_kwargs = {k: v for k, v in kwargs.items() if k == "gguf_file"}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code, **tok_kwargs)
        model = AutoModelForCausalLM.from_pretrained(name, trust_remote_code=trust_remote_code, dtype=dtype,
                                                     **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, pickle.UnpicklingError, SafetensorError) as exc:
        where = (" (no local path of that name exists either, so it was read as a hub id)"
                 if hub_form and not Path(name).exists() else "")
        raise ModelLoadError(f"could not load a causal LM from {name!r}{where}: {type(exc).__name__}: {exc}. "
                             "Give a local directory with config.json, safetensors weights and tokenizer "
                             "files (a truncated or corrupted model.safetensors reads as a header error: "
                             "save it again), or a hub id that is cached when offline") from exc
    return tokenizer, model


def own_aligned(module):
    """``module`` with every CPU parameter and buffer in memory of its own, aligned as torch allocates.

    Weights read from safetensors are views into the memory-mapped file, at the file's offsets (8-byte
    aligned). On some CPUs (seen on AMD EPYC) the BLAS kernels then take another path than for the
    same values in fresh memory, and a reloaded checkpoint's log-probabilities differ from the
    in-memory policy's in the last float32 bit (1e-6 relative). Copying those tensors once gives a
    reloaded policy the numbers the policy that was saved gave, bit for bit. Tied weights stay tied
    (the shared Parameter is changed in place).
    """
    for t in [*module.parameters(), *module.buffers()]:
        if t.device.type == "cpu" and t.data_ptr() % _ALIGNMENT:  # an empty tensor points at 0
            t.data = t.data.clone()
    return module


def _check_weight_files(directory: Path, gguf_file: str | None) -> None:
    """Refuse a directory whose weights exist only as pickles (before loading anything)."""
    if gguf_file is not None or any(directory.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise ModelLoadError(
            f"{str(directory)!r} holds weights only as pickle files ({', '.join(pickles)}); bayes_rlhf "
            "reads safetensors only, because loading a pickle can run arbitrary code. If you trust the "
            "file, convert it once: AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir) "
            "writes model.safetensors")


def source_name(lm) -> str | None:
    """How to load ``lm``'s weights again: 'default' for the embedded model, else its path or hub id."""
    from bayes_rlhf.models.default_model import DEFAULT_DIR

    source = getattr(lm, "source", None)
    if source is None:
        return None
    if Path(source).exists() and Path(source).resolve() == Path(DEFAULT_DIR).resolve():
        return "default"
    return str(Path(source).resolve()) if Path(source).exists() else source


# what a checkpoint folder holds (model, tokenizer, our support.json): a folder holding anything else is
# someone's, and saving over it would delete that
_CHECKPOINT_FILES = re.compile(r"(config|generation_config|special_tokens_map|added_tokens|tokenizer(_config)?|vocab|"
                               r"preprocessor_config|chat_template|support)\.(json|jinja)|merges\.txt|vocab\.txt|"
                               r"tokenizer\.model|spiece\.model|model(-\d+-of-\d+)?\.safetensors|"
                               r"model\.safetensors\.index\.json")


def check_save_dir(directory, lm) -> Path:
    """The folder ``lm.save_pretrained`` may (re)write, or OutputDirError before anything is written:
    not a file, not the working directory, not a folder of other files, not the prior of lm's support."""
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise OutputDirError(f"{str(d)!r} is a file; save_pretrained writes a folder: give a new folder's path")
    if d.resolve() == Path.cwd().resolve() or d.resolve() == Path(d.anchor or "/").resolve():
        raise OutputDirError(f"save_pretrained({str(directory)!r}) would replace the whole folder "
                             f"{str(d.resolve())!r}: give a folder for the checkpoint, e.g. ./policy")
    support = getattr(lm, "support", None)
    source = getattr(support, "source", None)
    if source is not None and Path(source).exists() and Path(source).resolve() == d.resolve():
        raise OutputDirError(f"{str(d)!r} holds the prior this policy is restricted to (its support.json names "
                             "it): saving there would destroy it; give another folder")
    if d.is_dir():
        others = sorted(p.name for p in d.iterdir() if not _CHECKPOINT_FILES.fullmatch(p.name))
        if others:
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            raise OutputDirError(f"{str(d)!r} holds files that are not a checkpoint's ({shown}); saving there "
                                 "would delete them: give a new or empty folder, or remove them first")
    return d


def write_support(directory: Path, lm) -> None:
    """Write ``support.json`` for a policy restricted to ``lm.support``'s top-k support."""
    record = {"format": 1, "prior": source_name(lm.support), "top_k": lm.support.top_k}
    (directory / SUPPORT_FILE).write_text(json.dumps(record, indent=2) + "\n")


def read_support(directory: Path) -> dict | None:
    """The support record of a checkpoint directory, or None when it has none."""
    path = Path(directory) / SUPPORT_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        if not isinstance(record.get("top_k"), int) or record["top_k"] < 1:
            raise ValueError("top_k must be an integer >= 1")
    except (ValueError, AttributeError) as exc:
        raise ModelLoadError(f"{str(path)!r} is not a valid support record ({exc}); it should read "
                             '{"format": 1, "prior": PATH, "top_k": K}. Delete it to load the plain '
                             "checkpoint") from exc
    return record


def support_prior(record: dict, directory, device, dtype):
    """Load the prior a support record names (with its top-k); ModelLoadError if it cannot be found."""
    from bayes_rlhf.models.causal_lm import CausalLM
    from bayes_rlhf.models.default_model import DEFAULT_DIR

    prior = record.get("prior")
    if prior is None:
        raise ModelLoadError(f"the checkpoint at {str(directory)!r} is restricted to a prior's top-"
                             f"{record['top_k']} support, but its support.json does not say which prior; "
                             "pass load_model(dir, support=prior_lm), or support=None for the plain model")
    path = DEFAULT_DIR if prior == "default" else prior
    try:
        return CausalLM.from_pretrained(path, device=device, dtype=dtype, top_k=record["top_k"], support=None)
    except ModelLoadError as exc:
        raise ModelLoadError(f"the checkpoint at {str(directory)!r} is restricted to the top-{record['top_k']} "
                             f"support of the prior {prior!r}, which could not be loaded ({exc}); pass "
                             "load_model(dir, support=prior_lm), or support=None for the plain model") from exc
