"""Shared pieces of the exact tests: a goodness-of-fit binning of samples against an enumerated table."""

from __future__ import annotations

import torch


def binned_counts(post, ids, mask, n_bins=15):
    """Counts over the n_bins most probable completions plus one bin for the rest, and expected."""
    top = torch.topk(post.log_probs, n_bins).indices.tolist()
    index = {tuple(post.completion_ids[k][post.mask[k]].tolist()): b for b, k in enumerate(top)}
    counts = torch.zeros(n_bins + 1)
    for r, m in zip(ids.tolist(), mask.tolist()):
        counts[index.get(tuple(t for t, keep in zip(r, m) if keep), n_bins)] += 1
    p = post.probs[top]
    expected = torch.cat([p, (1 - p.sum()).reshape(1)]) * ids.shape[0]
    return counts.numpy(), expected.numpy()
