"""The leaves of the completion tree, gathered chunk by chunk, assembled once into a sorted table.

A chunk is what one expanded node emits: the node's prefixes ``prefix [n, d]`` (shared, not
repeated per leaf), and for each leaf its row in the node, its last token and its log-prob.
Full-length leaves (d + 1 = T) are emitted by the depth-first walk already in lexicographic
order; leaves ended by EOS before T ("early" leaves, at most one per internal prefix) are not,
and are merged in. With integer keys (tokens + 1 as digits in base V + 1, zero-padded on the
right; they fit int64 when T digits do), assembly is::

    main_keys = parent_key[row] * base + token + 1             # sorted, one per full leaf
    early     = sort(early keys);  pos_e = searchsorted(main_keys, early) + arange(E)
    parent    = global parent row of each table row             # early rows: their own rows
    ids[:, j] = parent_table[j][parent]   (j < T - 1);  ids[:, T-1] = last tokens merged

so each output column is written once, in order, straight from the small parent table.
Without keys the table is built in emission order and sorted column by column.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bayes_rlhf.errors import SpaceTooLargeError


@dataclass
class Leaves:
    """Leaves accumulated chunk by chunk; ``tensors()`` assembles the lexicographic table.

    ``base`` is V + 1 (a token t is the digit t + 1; 0 is padding).
    """

    T: int
    pad_id: int
    base: int
    main: list = field(default_factory=list)   # (prefix [n, T-1], rows [m], tokens [m], lp [m], key [n])
    early: list = field(default_factory=list)  # (prefix [n, d], rows [m], tokens [m], lp [m], key [n]), d < T-1

    @property
    def keyed(self) -> bool:
        return self.T * self.base.bit_length() < 63

    def add(self, prefix: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor, lp: torch.Tensor,
            key: torch.Tensor | None) -> None:
        """Leaves ``prefix[rows] + tokens`` with log-probs ``lp`` (float64); ``rows`` non-decreasing."""
        if rows.numel():
            (self.main if prefix.shape[1] + 1 == self.T else self.early).append((prefix, rows, tokens, lp, key))

    def __len__(self) -> int:
        return sum(c[1].numel() for c in self.main + self.early)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ids [K, T] and mask [K, T] (transposed views of contiguous [T, K] tables), log-probs [K]."""
        if not self.main and not self.early:
            raise SpaceTooLargeError("the prior gives no completion positive probability")
        early = self._early_rows()
        if not self.keyed:
            return self._sorted_by_columns(early)
        main_keys = self._main_keys()
        if main_keys is None:  # not expected: the walk emits full-length leaves in order
            return self._sorted_by_columns(early)
        e_keys = early[3]
        order = torch.argsort(e_keys)
        e_ids, e_len, e_lp = early[0][order], early[1][order], early[2][order]
        E, Km = e_keys.numel(), main_keys.numel()
        pos_e = torch.searchsorted(main_keys, e_keys[order]) + torch.arange(E)
        is_main = torch.ones(Km + E, dtype=torch.bool)
        is_main[pos_e] = False
        del main_keys
        return self._write(is_main, pos_e, e_ids, e_len, e_lp)

    # ------------------------------------------------------------------ pieces
    def _early_rows(self):
        """Early leaves as full rows: ids [E, T] (padded), lengths [E], lp [E], keys [E] (or None)."""
        T = self.T
        ids, lens, lps, keys = [], [], [], []
        for prefix, rows, tokens, lp, key in self.early:
            d = prefix.shape[1]
            row = torch.full((rows.numel(), T), self.pad_id, dtype=torch.long)
            row[:, :d] = prefix[rows]
            row[:, d] = tokens
            ids.append(row)
            lens.append(torch.full((rows.numel(),), d + 1, dtype=torch.long))
            lps.append(lp)
            if key is not None and self.keyed:
                keys.append((key[rows] * self.base + tokens + 1) * self.base ** (T - d - 1))
        if not ids:
            empty = torch.zeros(0, dtype=torch.long)
            return torch.zeros((0, T), dtype=torch.long), empty, torch.zeros(0, dtype=torch.float64), empty
        return torch.cat(ids), torch.cat(lens), torch.cat(lps), (torch.cat(keys) if keys else None)

    def _main_keys(self) -> torch.Tensor | None:
        """Keys [Km] of the full-length leaves in emission order; None if they are not increasing."""
        out = torch.empty(sum(c[1].numel() for c in self.main), dtype=torch.long)
        s = 0
        for _, rows, tokens, _, key in self.main:
            m = rows.numel()
            torch.index_select(key, 0, rows, out=out[s: s + m])
            out[s: s + m].mul_(self.base).add_(tokens + 1)
            s += m
        if out.numel() > 1 and not bool((out[1:] > out[:-1]).all()):
            return None
        return out

    def _write(self, is_main, pos_e, e_ids, e_len, e_lp):
        """Fill the [T, K] columns: main leaves where ``is_main``, early rows at ``pos_e``."""
        T, K = self.T, is_main.numel()
        n_par = sum(c[0].shape[0] for c in self.main)
        # parent table, column-major: the main chunks' prefixes, then the early rows
        table = torch.empty((max(T - 1, 0), n_par + e_ids.shape[0]), dtype=torch.long)
        parent = torch.empty(K, dtype=torch.long)
        buf = torch.empty(K - e_ids.shape[0], dtype=torch.long)
        s = off = 0
        for prefix, rows, _, _, _ in self.main:
            n, m = prefix.shape[0], rows.numel()
            table[:, off: off + n] = prefix.t()
            torch.add(rows, off, out=buf[s: s + m])
            s, off = s + m, off + n
        table[:, n_par:] = e_ids[:, : T - 1].t()
        parent.masked_scatter_(is_main, buf)
        parent[pos_e] = torch.arange(n_par, n_par + e_ids.shape[0])
        cols = torch.empty((T, K), dtype=torch.long)
        for j in range(T - 1):
            torch.index_select(table[j], 0, parent, out=cols[j])
        del parent, table
        lp = torch.empty(K, dtype=torch.float64)
        if self.main:
            torch.cat([c[2] for c in self.main], out=buf)
            cols[T - 1].masked_scatter_(is_main, buf)
            lp.masked_scatter_(is_main, torch.cat([c[3] for c in self.main]))
        del buf
        cols[T - 1, pos_e] = e_ids[:, T - 1]
        lp[pos_e] = e_lp
        mask = torch.ones((T, K), dtype=torch.bool)
        for j in range(1, T):
            mask[j, pos_e[e_len <= j]] = False
        return cols.t(), mask.t(), lp

    def _sorted_by_columns(self, early):
        """Unkeyed assembly: the table in emission order, then a column-by-column stable sort."""
        e_ids, e_len, e_lp, _ = early
        parts = []
        for prefix, rows, tokens, lp, _ in self.main:
            parts.append(torch.cat([prefix[rows], tokens[:, None]], dim=1))
        ids = torch.cat(parts + [e_ids]) if parts else e_ids
        lengths = torch.cat([torch.full((ids.shape[0] - e_ids.shape[0],), self.T, dtype=torch.long), e_len])
        lp = torch.cat([c[3] for c in self.main] + [e_lp])
        mask = torch.arange(self.T)[None, :] < lengths[:, None]
        order = lexicographic_order(ids, mask, self.base - 1)
        cols, mask_cols = ids.t()[:, order].contiguous(), mask.t()[:, order].contiguous()
        return cols.t(), mask_cols.t(), lp[order]


def lexicographic_order(ids: torch.Tensor, mask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Permutation sorting completions by token ids, position 0 first; padding sorts first."""
    T = ids.shape[1]
    base = vocab_size + 1
    if T * (base.bit_length()) < 63:  # one integer key per row (Horner), one sort
        key = torch.zeros(ids.shape[0], dtype=torch.long)
        for col in range(T):
            key = key * base + torch.where(mask[:, col], ids[:, col] + 1, 0)
        return torch.argsort(key)
    key_ids = torch.where(mask, ids + 1, torch.zeros_like(ids))
    order = torch.arange(ids.shape[0])
    for col in range(T - 1, -1, -1):  # least significant column first, stable sorts
        order = order[torch.sort(key_ids[order, col], stable=True).indices]
    return order
