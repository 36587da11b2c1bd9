"""Paper-ready matplotlib figures: data in, ``Figure`` out; ``save_figure`` writes PDF and PNG."""

from bayes_rlhf.plots.distributions import plot_reward_histograms, plot_token_distributions
from bayes_rlhf.plots.divergence import plot_frontier, plot_log_z, plot_training, plot_weight_diagnostics
from bayes_rlhf.plots.style import PAPER_RC, new_figure, save_figure

__all__ = ["plot_frontier", "plot_log_z", "plot_training", "plot_weight_diagnostics",
           "plot_token_distributions", "plot_reward_histograms", "save_figure", "new_figure", "PAPER_RC"]
