"""torch_threads: the thread count set inside the block and restored after it, also on an error."""

from __future__ import annotations

import pytest
import torch

from bayes_rlhf.errors import ConfigError
from bayes_rlhf.threads import torch_threads


def test_set_inside_restored_after_also_on_error():
    before = torch.get_num_threads()
    other = 2 if before != 2 else 1
    with torch_threads(other) as restored:
        assert torch.get_num_threads() == other and restored == before
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="inside"):
        with torch_threads(other):
            raise RuntimeError("inside")
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", None])
def test_bad_counts_are_refused_before_anything_is_set(bad):
    before = torch.get_num_threads()
    with pytest.raises(ConfigError, match="threads must be an integer >= 1"):
        with torch_threads(bad):
            pass
    assert torch.get_num_threads() == before
