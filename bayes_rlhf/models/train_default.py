"""Train the embedded default model: ``python -m bayes_rlhf.models.train_default [--out DIR]``.

Corpus: short reviews from a small grammar, sampled with a fixed seed::

    review  := "the" NOUN VERB phrase [("and" | "but") phrase] "."
    phrase  := [ADVERB] ["not"] ADJECTIVE

Each noun has its own leaning (the movie and the book lean negative, the food and the service
positive) so that the posterior under the sentiment reward visibly moves away from the prior.
The model is a 2-layer word-level GPT-2 (about 0.1 M parameters), trained with AdamW on CPU in
a few minutes, and saved as safetensors with its tokenizer. The shipped weights were made with
``OMP_NUM_THREADS=1 python -m bayes_rlhf.models.train_default`` (4000 steps, seed 0).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch

from bayes_rlhf.models.default_model import DEFAULT_DIR, NEGATIVE, POSITIVE

NOUNS = {"movie": 0.2, "book": 0.35, "food": 0.8, "service": 0.65}  # P(positive adjective)
VERBS = ("was", "is")
ADVERBS = ("very", "really")
WORDS = ("the", *NOUNS, *VERBS, *ADVERBS, "not", *POSITIVE, *NEGATIVE, "and", "but", ".")


def _phrase(rng: random.Random, p_pos: float) -> list[str]:
    out = []
    if rng.random() < 0.35:
        out.append(rng.choice(ADVERBS))
    negate = rng.random() < 0.15
    if negate:
        out.append("not")
    positive = (rng.random() < p_pos) != negate  # "not bad" keeps the noun's leaning
    out.append(rng.choice(POSITIVE if positive else NEGATIVE))
    return out


def review(rng: random.Random) -> str:
    """One review from the grammar."""
    noun = rng.choice(list(NOUNS))
    words = ["the", noun, rng.choice(VERBS), *_phrase(rng, NOUNS[noun])]
    if rng.random() < 0.4:
        joiner = rng.choice(("and", "but"))
        p = NOUNS[noun] if joiner == "and" else 1 - NOUNS[noun]
        words += [joiner, *_phrase(rng, p)]
    return " ".join(words + ["."])


def train(out: Path, steps: int = 4000, batch: int = 64, seed: int = 0) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    from bayes_rlhf.models.causal_lm import CausalLM
    from bayes_rlhf.models.toy import word_tokenizer

    rng = random.Random(seed)
    tokenizer = word_tokenizer(WORDS, add_bos=True)
    corpus = [review(rng) for _ in range(20000)]
    eos = tokenizer.eos_token_id
    rows = [tokenizer(s)["input_ids"] + [eos] for s in corpus]
    L = max(map(len, rows))
    data = torch.full((len(rows), L), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        data[i, : len(r)] = torch.tensor(r)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=64, n_layer=2, n_head=4,
                         bos_token_id=1, eos_token_id=eos, pad_token_id=0)
        model = GPT2LMHeadModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(rows), (batch,), generator=gen)
        labels = data[idx]
        inputs = labels.clamp(min=0)
        att = (labels != -100).long()
        loss = model(input_ids=inputs, attention_mask=att, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}")
    return CausalLM(model, tokenizer, device="cpu").save_pretrained(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print("saved to", train(args.out, steps=args.steps, seed=args.seed))


if __name__ == "__main__":
    main()
