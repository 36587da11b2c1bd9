"""Reading text faithfully: words a tokenizer does not know are an error, not an <unk> token."""

from __future__ import annotations

from bayes_rlhf.errors import PromptError


def encode_known(tokenizer, text: str, *, add_special_tokens: bool, what: str) -> list[int]:
    """Token ids of ``text``; PromptError naming the words the tokenizer maps to its unknown token
    (encoding them as <unk> would silently condition on another text)."""
    unk = tokenizer.unk_token_id
    ids = list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])
    if unk is None or unk not in ids:
        return ids
    words = [w for w in unknown_words(tokenizer, text, unk) if w != tokenizer.unk_token]
    if not words:  # the text spells the unknown (or padding) token itself
        return ids
    raise PromptError(f"the {what} {short(text)} has word(s) this tokenizer does not know: "
                      f"{', '.join(repr(w) for w in words)} (they would be read as "
                      f"{tokenizer.unk_token!r}); use words from the model's vocabulary "
                      f"(check case and spelling){_listing(tokenizer)}")


def _listing(tokenizer, limit: int = 64) -> str:
    """'': the words of a small word-level vocabulary (the embedded model's), so the user sees them."""
    vocab = getattr(tokenizer, "get_vocab", None)
    if vocab is None:  # a minimal tokenizer-like object: the error stands without a listing
        return ""
    special = set(getattr(tokenizer, "all_special_tokens", ()))
    words = [w for w, _ in sorted(vocab().items(), key=lambda kv: kv[1]) if w not in special]
    if not words or len(words) > limit:
        return ""
    return ": " + " ".join(words)


def short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def unknown_words(tokenizer, text: str, unk: int) -> list[str]:
    """The pieces of ``text`` that encode to ``unk``: by character offsets with a fast tokenizer,
    else word by word."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        spans = [text[a:b] for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]) if i == unk and b > a]
    except (NotImplementedError, ValueError, TypeError):
        spans = []
    if not spans:
        spans = [w for w in text.split() if unk in tokenizer(w, add_special_tokens=False)["input_ids"]]
    seen: dict[str, None] = {}
    for w in spans:
        seen.setdefault(w.strip() or w, None)
    return list(seen) or [text]
