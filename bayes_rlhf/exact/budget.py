"""Memory estimates of an enumeration: the table it returns, and the tree walk's KV caches.

The size guard compares the bytes the table needs (ids, mask, log-probs and the arrays an
``ExactPosterior`` adds) with the memory this machine has available now. The tree walk is
bounded separately, by a memory budget: the depth-first stack holds one node per depth, each
with the KV cache of its rows, and one step in flight at the deepest depth holds two copies of
a chunk's cache (before and after the new token) and its logits. With ``B`` rows per step,
``c`` cache bytes per token and row, prompt length ``P`` and at most ``cap_d`` prefixes at
depth d::

    walk(B) = sum_{d=1}^{T-2} min(B, cap_d) * c * (P + d)            # the stack
              + min(B, cap_{T-1}) * (c * (2 (P + T - 2) + 1) + 2 * V * s)   # the step in flight

and ``plan_batch`` picks the largest ``B <= batch_size`` with ``walk(B) <= budget``. The walk's
last forward (``siblings.py``) holds less: the chunk's parents' cache once, and logits for at
most 1.5 B padded rows, within the two copies and two logits per row counted here.
"""

from __future__ import annotations

DEFAULT_MEMORY_BUDGET = 2 << 30  # bytes for the walk's KV caches and logits


def table_bytes(completions: int, T: int) -> int:
    """Peak bytes of a table of ``completions`` rows and the posterior built from it.

    Per completion: ids (int64 [T]) and mask (bool [T]); while the table is assembled, each
    leaf's token, parent row, log-prob and sort key (4 x 8 bytes) and the output log-prob; then
    the posterior's rewards, log-weights and log-probs (3 x 8 bytes) and a reward temporary.
    """
    return completions * (9 * T + 8 * 10)


def available_memory() -> int:
    """Bytes of memory available to a new allocation now (psutil, else /proc/meminfo)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil ships with the test extras
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024


def config_cache_bytes(lm) -> int | None:
    """KV-cache bytes per token and row, read from the model config (None when it does not say)."""
    cfg = getattr(lm.model, "config", None)
    layers = getattr(cfg, "num_hidden_layers", None)
    heads = getattr(cfg, "num_attention_heads", None)
    hidden = getattr(cfg, "hidden_size", None)
    if not (isinstance(layers, int) and isinstance(heads, int) and isinstance(hidden, int)):
        return None
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    return 2 * layers * kv_heads * head_dim * lm.dtype.itemsize


def state_cache_bytes(state) -> int:
    """KV-cache bytes per token and row of a live ``LMState`` (measured on its tensors)."""
    total = 0
    for layer in getattr(state.cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if t is not None and hasattr(t, "element_size"):
                total += t.element_size() * t.numel()
    rows, length = state.attention_mask.shape
    own = total // max(1, rows * length)
    support = getattr(state, "support", None)  # a support model's state travels beside (same rows)
    return own + (state_cache_bytes(support) if support is not None else 0)


def walk_bytes(rows: int, T: int, cache_per_token: int, prompt_len: int, logits_per_row: int,
               caps: list[int]) -> int:
    """``walk(B)`` of the module docstring; ``caps[d]`` bounds the prefixes at depth d (0..T-1)."""
    held = sum(min(rows, caps[d]) * cache_per_token * (prompt_len + d) for d in range(1, T - 1))
    if T < 2:
        return held
    step = cache_per_token * (2 * (prompt_len + T - 2) + 1) + 2 * logits_per_row
    return held + min(rows, caps[T - 1]) * step


def plan_batch(batch_size: int, memory_budget: int, T: int, cache_per_token: int, prompt_len: int,
               logits_per_row: int, branching: int) -> int:
    """Rows per step: the largest ``B <= batch_size`` whose ``walk(B)`` fits ``memory_budget``, >= 1."""
    caps = [branching ** d for d in range(T)]
    fits = lambda b: walk_bytes(b, T, cache_per_token, prompt_len, logits_per_row, caps) <= memory_budget  # noqa: E731
    if fits(batch_size):
        return batch_size
    lo, hi = 1, batch_size  # fits(hi) is False; find the largest b with fits(b)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def gib(n: int) -> str:
    """Bytes as a short human-readable string."""
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
