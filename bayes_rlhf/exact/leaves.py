"""The leaves of the completion tree, gathered chunk by chunk, assembled once into a sorted table.

A chunk is what one expanded node emits: the node's prefixes ``prefix [n, d]`` (shared, not
repeated per leaf), and for each leaf its row in the node, its last token and its log-prob.
Full-length leaves (d + 1 = T) are emitted by the depth-first walk already in lexicographic
order; leaves ended by EOS before T ("early" leaves, at most one per internal prefix) are not,
and are merged in. With integer keys (tokens + 1 as digits in base V + 1, zero-padded on the
right; they fit int64 when T digits do), assembly works on units, a unit being a parent prefix
of full leaves (its block of leaves) or one early leaf::

    parent_keys = keys of the full leaves' parents, increasing     # N of them, not K
    early       = sort(early keys);  at = searchsorted(parent_keys * base, early) + arange(E)
    units       = parents with the early leaves inserted at ``at``;  sizes: leaves per parent, 1
    unit        = repeat_interleave(arange(U), sizes)              # the unit of each table row
    ids[:, j]   = unit_table[j][unit]  (j < T - 1);   last tokens, log-probs: scattered around
                                                                   # the early leaves' rows

so each output column is written once, in order, from a table of U rows.
Without keys the table is built in emission order and sorted column by column.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bayes_rlhf.errors import SpaceTooLargeError

_GROUP = 1 << 16  # table rows per group of the column writes (their unit index stays in cache)


@dataclass
class Leaves:
    """Leaves accumulated chunk by chunk; ``tensors()`` assembles the lexicographic table.

    ``base`` is V + 1 (a token t is the digit t + 1; 0 is padding).
    """

    T: int
    pad_id: int
    base: int
    # (prefix [n, T-1], rows [m], tokens [m], lp [m], key [n]); dense: rows None, tokens and lp [n, k]
    main: list = field(default_factory=list)
    early: list = field(default_factory=list)  # (prefix [n, d], rows [m], tokens [m], lp [m], key [n]), d < T-1

    @property
    def keyed(self) -> bool:
        return self.T * self.base.bit_length() < 63

    def add(self, prefix: torch.Tensor, rows: torch.Tensor | None, tokens: torch.Tensor, lp: torch.Tensor,
            key: torch.Tensor | None) -> None:
        """Leaves ``prefix[rows] + tokens`` with log-probs ``lp`` (float64); ``rows`` non-decreasing.

        ``rows=None``: a dense chunk, every row of ``prefix`` followed by each of its k tokens
        ``tokens[i]`` (tokens and lp [n, k]; full-length leaves only).
        """
        if rows is None:
            if prefix.shape[1] + 1 != self.T:
                rows, tokens, lp = _flat(prefix.shape[0], rows, tokens, lp)
            elif lp.numel():
                self.main.append((prefix, None, tokens, lp, key))
                return
        if rows.numel():
            (self.main if prefix.shape[1] + 1 == self.T else self.early).append((prefix, rows, tokens, lp, key))

    def __len__(self) -> int:
        return sum(c[3].numel() for c in self.main + self.early)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ids [K, T] and mask [K, T] (transposed views of contiguous [T, K] tables), log-probs [K]."""
        if not self.main and not self.early:
            raise SpaceTooLargeError("the prior gives no completion positive probability")
        early = self._early_rows()
        if not self.keyed:
            return self._sorted_by_columns(early)
        units = self._units(early)
        if units is None:  # not expected: the walk emits full-length leaves in order
            return self._sorted_by_columns(early)
        return self._write(*units)

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

    def _units(self, early):
        """The table as a sequence of units in lexicographic order: each parent prefix of the main
        chunks (a block of its leaves) and each early leaf (a block of one).

        A full leaf q + v sorts before an early leaf e exactly when its parent q does (they differ
        within e's length), so merging needs the N parent keys only, not the K leaf keys. Returns
        (unit table [T-1, U], unit sizes [U], early unit positions [E], early rows sorted), or None
        when the parents are not in increasing order.
        """
        e_ids, e_len, e_lp, e_keys = early
        par_keys = torch.cat([c[4] for c in self.main]) if self.main else torch.zeros(0, dtype=torch.long)
        if par_keys.numel() > 1 and not bool((par_keys[1:] > par_keys[:-1]).all()):
            return None
        sizes = torch.cat([torch.full((c[0].shape[0],), c[3].shape[1], dtype=torch.long) if c[1] is None
                           else torch.bincount(c[1], minlength=c[0].shape[0]) for c in self.main]) if self.main \
            else torch.zeros(0, dtype=torch.long)
        order = torch.argsort(e_keys)
        e_ids, e_len, e_lp = e_ids[order], e_len[order], e_lp[order]
        E, N = e_ids.shape[0], par_keys.numel()
        upos = torch.searchsorted(par_keys * self.base, e_keys[order]) + torch.arange(E)
        is_par = torch.ones(N + E, dtype=torch.bool)
        is_par[upos] = False
        unit_sizes = torch.ones(N + E, dtype=torch.long)
        unit_sizes.masked_scatter_(is_par, sizes)
        table = torch.empty((self.T - 1, N + E), dtype=torch.long)
        if self.main:
            table[:, is_par] = torch.cat([c[0] for c in self.main]).t()
        table[:, upos] = e_ids[:, : self.T - 1].t()
        return table, unit_sizes, is_par, upos, e_ids, e_len, e_lp

    def _write(self, table, unit_sizes, is_par, upos, e_ids, e_len, e_lp):
        """Fill the [T, K] columns from the units: one gather per prefix column; the last tokens
        and log-probs of each main chunk scattered into its span of rows, around early leaves."""
        T, K = self.T, int(unit_sizes.sum())
        end = torch.cumsum(unit_sizes, 0)
        pos_e = end[upos] - 1  # table row of each early leaf
        # the span of table rows of each main chunk: from its first parent's block to its last's
        par_units = torch.nonzero(is_par).squeeze(-1)
        n = torch.tensor([c[0].shape[0] for c in self.main], dtype=torch.long)
        last = torch.cumsum(n, 0) - 1
        spans = zip((end - unit_sizes)[par_units[last - n + 1]].tolist(), end[par_units[last]].tolist())
        del end, par_units
        cols = torch.empty((T, K), dtype=torch.long)
        if T > 1:
            self._write_prefix_columns(table, unit_sizes, cols)
        is_main = torch.ones(K, dtype=torch.bool)
        is_main[pos_e] = False
        lp = torch.empty(K, dtype=torch.float64)
        for (a, b), (_, _, tokens, chunk_lp, _) in zip(spans, self.main):
            cols[T - 1, a:b].masked_scatter_(is_main[a:b], tokens.reshape(-1))
            lp[a:b].masked_scatter_(is_main[a:b], chunk_lp.reshape(-1))
        cols[T - 1, pos_e] = e_ids[:, T - 1]
        lp[pos_e] = e_lp
        mask = torch.ones((T, K), dtype=torch.bool)
        for j in range(1, T):
            mask[j, pos_e[e_len <= j]] = False
        return cols.t(), mask.t(), lp

    @staticmethod
    def _write_prefix_columns(table, unit_sizes, cols):
        """cols[j, row] = table[j, unit of row] for j < T - 1, in groups of about ``_GROUP`` rows
        (whole units), so that each group's unit index stays in the CPU's cache."""
        U, K = unit_sizes.numel(), cols.shape[1]
        end = torch.cumsum(unit_sizes, 0)
        cuts = torch.searchsorted(end, torch.arange(1, (K - 1) // _GROUP + 1) * _GROUP, right=True)
        bounds = torch.unique_consecutive(torch.cat([torch.zeros(1, dtype=torch.long), cuts,
                                                     torch.tensor([U])])).tolist()
        rows = [0] + end[torch.tensor(bounds[1:]) - 1].tolist()
        for (u0, u1), (r0, r1) in zip(zip(bounds, bounds[1:]), zip(rows, rows[1:])):
            unit = torch.repeat_interleave(torch.arange(u1 - u0), unit_sizes[u0:u1], output_size=r1 - r0)
            for j in range(table.shape[0]):
                torch.index_select(table[j, u0:u1], 0, unit, out=cols[j, r0:r1])

    def _sorted_by_columns(self, early):
        """Unkeyed assembly: the table in emission order, then a column-by-column stable sort."""
        e_ids, e_len, e_lp, _ = early
        parts = []
        lps = []
        for prefix, rows, tokens, lp, _ in self.main:
            rows, tokens, lp = _flat(prefix.shape[0], rows, tokens, lp)
            parts.append(torch.cat([prefix[rows], tokens[:, None]], dim=1))
            lps.append(lp)
        ids = torch.cat(parts + [e_ids]) if parts else e_ids
        lengths = torch.cat([torch.full((ids.shape[0] - e_ids.shape[0],), self.T, dtype=torch.long), e_len])
        lp = torch.cat(lps + [e_lp])
        mask = torch.arange(self.T)[None, :] < lengths[:, None]
        order = lexicographic_order(ids, mask, self.base - 1)
        cols, mask_cols = ids.t()[:, order].contiguous(), mask.t()[:, order].contiguous()
        return cols.t(), mask_cols.t(), lp[order]


def _flat(n: int, rows: torch.Tensor | None, tokens: torch.Tensor, lp: torch.Tensor):
    """A chunk's (rows [m], tokens [m], lp [m]); a dense chunk (rows None, [n, k]) flattened."""
    if rows is not None:
        return rows, tokens, lp
    return torch.arange(n).repeat_interleave(lp.shape[1]), tokens.reshape(-1), lp.reshape(-1)


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
