"""``torch_threads(n)``: a block run with torch's intra-op thread count set to ``n``, restored after.

The scripts (analysis, examples) run tiny models, for which one thread is fastest, and may be run
inside another process (the tests import them), so they set the count for their own work only::

    with torch_threads(args.threads):
        return run(args)          # torch.get_num_threads() == args.threads here; as before after,
                                  # also when run raises
"""

from __future__ import annotations

import contextlib

import torch

from bayes_rlhf._checks import check_int


@contextlib.contextmanager
def torch_threads(n: int):
    """Set ``torch.set_num_threads(n)`` for the block; yields the count it restores on exit.

    Raises ConfigError (before anything is set) unless ``n`` is an integer >= 1.
    """
    n = check_int(n, "threads", 1)
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield before
    finally:
        torch.set_num_threads(before)
