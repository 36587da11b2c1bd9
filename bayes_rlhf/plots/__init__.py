"""Paper-ready matplotlib figures: data in, ``Figure`` out; ``save_figure`` writes PDF and PNG."""

from bayes_rlhf.plots.distributions import (TokenLabels, plot_reward_histograms, plot_token_distributions,
                                            token_label, visible_text)
from bayes_rlhf.plots.frontier import plot_frontier
from bayes_rlhf.plots.samplers import plot_log_z, plot_weight_diagnostics
from bayes_rlhf.plots.style import PAPER_RC, colour_for, new_figure, save_figure
from bayes_rlhf.plots.training import plot_training, plot_training_panels

__all__ = ["plot_frontier", "plot_log_z", "plot_training", "plot_training_panels", "plot_weight_diagnostics",
           "plot_token_distributions", "plot_reward_histograms", "token_label", "TokenLabels", "visible_text",
           "save_figure", "new_figure", "colour_for", "PAPER_RC"]
