"""Subcommands of ``bayes-rlhf``: each module defines ``register(subparsers)`` setting ``func``."""
