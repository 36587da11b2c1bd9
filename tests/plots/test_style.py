"""What every figure shares (plots/style.py and the checks in figure_checks.py): refusals of bad input
before drawing, and checks that catch a column name in a legend or a marker outside its axes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from figure_checks import assert_human_legend, assert_inside_limits

from bayes_rlhf.errors import ConfigError
from bayes_rlhf.plots import plot_frontier, plot_token_distributions, plot_training, save_figure


def test_bad_input(tmp_path):
    with pytest.raises(ConfigError):
        plot_frontier([])
    with pytest.raises(ConfigError):
        plot_token_distributions(["a", "b"], {})
    with pytest.raises(ConfigError):
        save_figure("not a figure", tmp_path / "x")


def test_legend_checks_catch_column_names():
    fig = plot_training([0, 1], {"kl_prior": [0.0, 1.0]})
    with pytest.raises(AssertionError, match="column name"):
        assert_human_legend(fig)
    fig = plot_training([0, 1, 2, 3, 4], {"x": [0.0, math.nan, math.nan, math.nan, 1.0]})  # sparse: markers
    assert assert_inside_limits(fig) == 2
    fig.axes[0].set_ylim(0.2, 0.8)
    with pytest.raises(AssertionError):
        assert_inside_limits(fig)
    assert np.isfinite(fig.axes[0].get_ylim()).all()
