"""Tiny models for tests and benchmarks: word-level tokenizers and random small causal LMs.

Everything here is built from a config in memory: nothing is downloaded.
"""

from __future__ import annotations

from typing import Sequence

import torch

from bayes_rlhf.errors import ConfigError
from bayes_rlhf.models.causal_lm import CausalLM

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")


def word_tokenizer(words: Sequence[str], add_bos: bool = True):
    """A ``PreTrainedTokenizerFast`` over whitespace-separated ``words``.

    Ids: ``<pad>`` 0, ``<s>`` 1 (BOS), ``</s>`` 2 (EOS), then ``words`` in order. With
    ``add_bos`` the tokenizer prepends BOS to every encoded prompt, so the empty prompt is valid.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(list(SPECIAL_TOKENS) + list(words))}
    if len(vocab) != len(SPECIAL_TOKENS) + len(words):
        raise ConfigError("word_tokenizer: words must be distinct and must not reuse special tokens")
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<pad>")


def tiny_words(vocab_size: int) -> list[str]:
    """Word list making a tokenizer of exactly ``vocab_size`` tokens (3 special tokens + words)."""
    if vocab_size < 4:
        raise ConfigError(f"vocab_size must be >= 4 (3 special tokens and a word), got {vocab_size}")
    return [f"w{i}" for i in range(vocab_size - len(SPECIAL_TOKENS))]


def tiny_lm(arch: str = "gpt2", vocab_size: int = 16, seed: int = 0, dtype=torch.float64,
            hidden: int = 32, layers: int = 2, heads: int = 2, add_bos: bool = True,
            top_k: int | None = None, device: str = "cpu") -> CausalLM:
    """A randomly initialised tiny causal LM (``gpt2`` or ``llama``) with a word tokenizer.

    The output layer is scaled up so next-token distributions are far from uniform.
    """
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tokenizer = word_tokenizer(tiny_words(vocab_size), add_bos=add_bos)
    special = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    with torch.random.fork_rng(devices=[]):  # model init draws from the global generator
        torch.manual_seed(seed)
        if arch == "gpt2":
            cfg = GPT2Config(vocab_size=vocab_size, n_positions=64, n_embd=hidden, n_layer=layers,
                             n_head=heads, **special)
            model = GPT2LMHeadModel(cfg)
        elif arch == "llama":
            cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                              num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=1,
                              max_position_embeddings=64, tie_word_embeddings=False, **special)
            model = LlamaForCausalLM(cfg)
        else:
            raise ConfigError(f"arch must be 'gpt2' or 'llama', got {arch!r}")
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.3)
    return CausalLM(model, tokenizer, device=device, dtype=dtype, top_k=top_k)
