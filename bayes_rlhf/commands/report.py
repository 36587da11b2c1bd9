"""``bayes-rlhf report RUN_DIR``: write an HTML report (report.html, figures/) of a run directory.

Report-able folders: the --out of ``demo``, ``exact`` and ``evaluate`` (run directories), and
that of ``train`` with ``[evaluate] exact = true``, whose run directory is RUN_DIR/exact.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EPILOG = """example:
  bayes-rlhf exact --out runs/exact && bayes-rlhf report runs/exact

demo and evaluate --out write their report already (run report again to redraw it, e.g.
with other --betas); a train folder's report goes to RUN_DIR/exact/."""


def register(subparsers) -> argparse.ArgumentParser:
    from bayes_rlhf.commands._common import HelpFormatter, at_least_one

    p = subparsers.add_parser("report", help="write an HTML report of a run directory",
                              description="Write RUN_DIR/report.html (figures and tables) from a run directory, "
                                          "what bayes_rlhf.save_run writes; the figures also go to "
                                          "RUN_DIR/figures/ (PDF and PNG).",
                              epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR",
                   help="the --out folder of demo, exact, evaluate, or train with [evaluate] exact = true")
    p.add_argument("--betas", type=float, nargs="+", default=None, metavar="BETA",
                   help="beta grid of the reward-KL frontier (default: 25 values from 0.05 to 20)")
    p.add_argument("--link-figures", action="store_true",
                   help="reference figures/*.png instead of embedding them in the HTML")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.add_argument("--threads", type=at_least_one, default=1, metavar="N",
                   help="torch threads (default 1: the report's work is many passes over tables, which more "
                        "threads slow down when other work shares the CPU)")
    p.set_defaults(func=run)
    return p


def run_directory(run_dir) -> Path:
    """The run directory a report reads: RUN_DIR, or RUN_DIR/exact for a ``train`` folder.

    RunDirError for a train folder trained without exact evaluation, naming what makes one.
    """
    from bayes_rlhf.diagnostics.run_dir import RunDirError
    from bayes_rlhf.io import MARKER

    run_dir = Path(run_dir)
    try:
        marker = json.loads((run_dir / MARKER).read_text())
        command, settings = marker.get("command"), marker.get("settings") or {}
    except (OSError, ValueError, AttributeError):
        return run_dir
    if command != "train":
        return run_dir
    if (run_dir / "exact" / "summary.json").is_file():
        return run_dir / "exact"
    raise RunDirError(f"{run_dir} is a `bayes-rlhf train` folder without an exact evaluation to report; set "
                      "[evaluate] exact = true in its config and run the same train command again (it resumes "
                      f"and writes {run_dir / 'exact'}), or run `{evaluate_command(run_dir, settings)} --out DIR` "
                      "(the policy against the target it was trained for); its DIR/report.html is the report")


def evaluate_command(run_dir: Path, settings: dict) -> str:
    """The ``bayes-rlhf evaluate`` line comparing a train folder's policy with the target it was trained
    for (its run.json settings), naming only the settings that differ from evaluate's defaults."""
    import shlex

    from bayes_rlhf.demo import DEFAULT_BETA, DEFAULT_MAX_NEW_TOKENS, DEFAULT_MODEL, DEFAULT_PROMPTS, DEFAULT_REWARD

    t = settings.get("target") if isinstance(settings.get("target"), dict) else {
        k.removeprefix("target."): v for k, v in settings.items() if k.startswith("target.")}
    args = ["bayes-rlhf", "evaluate", "--policy", str(run_dir / "policy")]
    for flag, key, default in (("--model", "model", DEFAULT_MODEL), ("--reward", "reward", DEFAULT_REWARD),
                               ("--beta", "beta", DEFAULT_BETA), ("--max-new-tokens", "max_new_tokens",
                                                                  DEFAULT_MAX_NEW_TOKENS),
                               ("--top-k", "top_k", None), ("--dtype", "dtype", None)):
        if t.get(key, default) != default:
            args += [flag, f"{t[key]:g}" if isinstance(t[key], float) else str(t[key])]
    prompts = t.get("prompts") or []
    if prompts != list(DEFAULT_PROMPTS) or t.get("model", DEFAULT_MODEL) != DEFAULT_MODEL:
        for prompt in prompts:
            args += ["--prompt", prompt]
    return shlex.join(args)


def run(args) -> int:
    """Write the report; a missing or half-written RUN_DIR raises ``RunDirError`` (the CLI prints it)."""
    from bayes_rlhf.report import write_report
    from bayes_rlhf.threads import torch_threads

    with torch_threads(args.threads):
        path = write_report(run_directory(args.run_dir), betas=args.betas, embed_figures=not args.link_figures,
                            progress=args.progress)
    print(path)
    return 0
