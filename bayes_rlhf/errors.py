"""Typed errors. Each message says what was wrong and what to change."""


class BayesRLHFError(ValueError):
    """Base class of every error the toolkit raises for bad input."""


class ConfigError(BayesRLHFError):
    """A configuration value is out of range (beta, max_new_tokens, sizes, names)."""


class ModelLoadError(BayesRLHFError):
    """A model or tokenizer could not be loaded from the given path or hub id."""


class PromptError(BayesRLHFError):
    """A prompt cannot be used with this model (e.g. empty and no BOS token)."""


class RewardError(BayesRLHFError):
    """A reward returned NaN, the wrong length or the wrong type."""


class SpaceTooLargeError(BayesRLHFError):
    """The completion space is too large to enumerate exactly."""


class TokenizerMismatchError(BayesRLHFError):
    """Two models that must share a tokenizer do not."""


class NoMassError(BayesRLHFError):
    """Every sample has zero target mass (all rewards are -inf)."""


class OutputDirError(BayesRLHFError):
    """An output folder (``--out``) cannot be created, or holds another run that it would overwrite."""


class ConstraintMismatchError(BayesRLHFError):
    """A locally constrained proposal's constraint disagrees with the target's reward (SMC would be biased)."""
