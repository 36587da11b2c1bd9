"""The ``bayes-rlhf`` command: subcommands live in ``bayes_rlhf/commands/``, one module each."""

from __future__ import annotations

import argparse
import importlib
import sys

from bayes_rlhf.errors import BayesRLHFError, SpaceTooLargeError

COMMANDS = ("demo", "exact", "train", "evaluate", "report")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bayes-rlhf",
        description="KL-regularised RL fine-tuning as Bayesian inference: exact posteriors, samplers, "
                    "variational policies and diagnostics.",
        epilog="Start with `bayes-rlhf demo` (about 30 s on a CPU; writes demo_out/report.html); "
               "`bayes-rlhf COMMAND --help` explains each command with an example.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"bayes_rlhf.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"bayes_rlhf.commands.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BayesRLHFError as exc:
        hint = ""
        if isinstance(exc, SpaceTooLargeError):  # its advice names the Python arguments
            hint = (" On the command line: a lower --max-new-tokens, --top-k K"
                    + (", or --max-completions N." if args.command == "exact" else "."))
        print(f"bayes-rlhf {args.command}: error: {exc}{hint}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
