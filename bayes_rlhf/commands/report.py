"""``bayes-rlhf report RUN_DIR``: write RUN_DIR/report.html from a run directory."""

from __future__ import annotations

import argparse

EPILOG = """example:
  bayes-rlhf demo --out runs/demo && bayes-rlhf report runs/demo
The run directory is what bayes_rlhf.report.save_run writes (summary.json, posterior tables,
inference_data.nc). Figures go to RUN_DIR/figures/ (PDF and PNG)."""


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("report", help="write an HTML report of a run directory",
                              description="Write RUN_DIR/report.html (figures and tables) from a run directory.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="directory written by save_run / `bayes-rlhf demo --out`")
    p.add_argument("--betas", type=float, nargs="+", default=None,
                   help="beta grid of the reward-KL frontier (default: 25 values from 0.05 to 20)")
    p.add_argument("--link-figures", action="store_true",
                   help="reference figures/*.png instead of embedding them in the HTML")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    """Write the report; a missing or half-written RUN_DIR raises ``RunDirError`` (the CLI prints it)."""
    from bayes_rlhf.report import write_report

    path = write_report(args.run_dir, betas=args.betas, embed_figures=not args.link_figures,
                        progress=args.progress)
    print(path)
    return 0
