"""A tiny causal LM over a byte-level BPE vocabulary (pieces such as 'Ġa', '<|endoftext|>'),
whose next-token distribution is a fixed one we choose, so figures of it are predictable."""

from __future__ import annotations

import torch

import bayes_rlhf as br

CORPUS = ["a cake was made", "she made a cake", "the cake is a lie", "café – naïve"] * 20
WORDS = {" a": 3.0, " made": 2.5, " cake": 2.0, " –": 1.0}  # next-token logits; every other token -30


def bpe_tokenizer():
    """A byte-level BPE tokenizer trained in memory (289 tokens, id 0 = '<|endoftext|>')."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   bos_token="<|endoftext|>")


def word_id(tokenizer, word: str) -> int:
    (i,) = tokenizer.encode(word)
    return i


def bpe_lm(eos_logit: float = 0.5, top_k: int | None = 6) -> br.CausalLM:
    """GPT-2 whose final layer norm outputs a constant, so every next-token distribution is
    softmax(logits) with ``WORDS`` (and EOS at ``eos_logit``) far above the rest; ``top_k``
    keeps the table small (6 tokens: the four words, EOS and one near-zero token)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = bpe_tokenizer()
    V = len(tok)
    cfg = GPT2Config(vocab_size=V, n_positions=16, n_embd=8, n_layer=1, n_head=1, bos_token_id=0,
                     eos_token_id=0, pad_token_id=0, tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(cfg)
    logits = -30.0 - 1e-3 * torch.arange(V, dtype=torch.float32)  # distinct: top-k keeps exactly k
    for w, v in WORDS.items():
        logits[word_id(tok, w)] = v
    logits[0] = eos_logit
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0  # hidden state e_0 at every position
        model.lm_head.weight.zero_()
        model.lm_head.weight[:, 0] = logits
    return br.CausalLM(model, tok, device="cpu", dtype=torch.float64, top_k=top_k)
