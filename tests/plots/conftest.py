"""Fixtures shared by the plot tests (helpers for checking figures are in figure_checks.py)."""

from __future__ import annotations

import pytest
from bpe_model import bpe_lm


@pytest.fixture(scope="module")
def bpe():
    return bpe_lm()
