"""Helpers shared by subcommands: one vocabulary of arguments, the prior and target they name,
the --out rule, printing a posterior and writing its tables.

Every subcommand that takes these arguments means the same by them::

    --model PATH_OR_ID    'default' (the default) is the embedded model; else a directory or hub id
    --top-k K, --dtype    truncate / cast the prior
    --prompt TEXT         repeatable; default: the embedded model's demo prompts (with --model default)
    --reward SPEC         bayes_rlhf.rewards.spec.parse_reward (default 'sentiment')
    --beta, --max-new-tokens   default DEFAULT_BETA = 1.0, DEFAULT_MAX_NEW_TOKENS = 4
The defaults (model, prompts, reward, beta, T) are the demo target's, ``bayes_rlhf.demo``.
    --kl-budget KL, --moment FEATURE_SPEC=VALUE   (exact) choose beta, or build a moment target
    --out DIR, --overwrite     bayes_rlhf.io.claim_out: refuse a folder holding another run
"""

from __future__ import annotations

import argparse
import contextlib
import math
from pathlib import Path

from bayes_rlhf.demo import DEFAULT_BETA, DEFAULT_MAX_NEW_TOKENS, DEFAULT_MODEL, DEFAULT_REWARD
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.exact.posterior import ExactPosterior
from bayes_rlhf.io import OutFolder, claim_out, write_csv

DTYPES = ("float32", "float64", "bfloat16", "float16")
OVERWRITE_HELP = ("replace an --out folder that holds another command's run, a run with other settings or "
                  "other files (swapped in once the new output is complete); without it such a folder is "
                  "refused and left untouched")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` of a subcommand: prose paragraphs (unindented lines) wrapped to the terminal's width,
    indented lines (examples, a config file) kept as written."""

    def _fill_text(self, text, width, indent):
        import textwrap

        out, prose = [], []
        for line in text.splitlines() + [""]:
            if line and not line[0].isspace():
                prose.append(line)
                continue
            if prose:
                out.append(textwrap.fill(" ".join(prose), width, initial_indent=indent, subsequent_indent=indent))
                prose = []
            out.append(indent + line)
        return "\n".join(out[:-1])


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="PATH_OR_ID",
                   help=f"prior: a model directory or hub id ({DEFAULT_MODEL!r}: the embedded model; the default)")
    p.add_argument("--top-k", type=at_least_one, default=None, metavar="K", help="truncate the prior to its top k tokens per step")
    p.add_argument("--dtype", default=None, choices=DTYPES, help="load the prior in this dtype")
    add_threads_arg(p)


THREADS_HELP = ("torch threads (default: 1 with the embedded model, which is tiny: more threads do not help, and "
                "they stall when other work shares the CPU; torch's own default with any other model)")


def add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=at_least_one, default=None, metavar="N", help=THREADS_HELP)


def command_threads(threads: int | None, model: str):
    """The block a command runs in: ``torch_threads(threads)``; by default one thread for the embedded
    model (as the demo runs it) and torch's own count for any other. With the embedded model
    transformers' progress bars are off too (``hf_progress_bars_off``)."""
    import contextlib

    from bayes_rlhf.threads import torch_threads

    stack = contextlib.ExitStack()
    if model == DEFAULT_MODEL:
        stack.enter_context(hf_progress_bars_off())
        threads = 1 if threads is None else threads
    if threads is not None:
        stack.enter_context(torch_threads(threads))
    return stack


@contextlib.contextmanager
def hf_progress_bars_off():
    """transformers' progress bars off in the block, restored after: loading or saving the embedded
    model's 28 tensors is instant, and "Loading weights 28/28" bars only break up a command's output."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def add_target_args(p: argparse.ArgumentParser) -> None:
    """--prompt, --reward, --beta, --max-new-tokens, with the same defaults in every subcommand."""
    from bayes_rlhf.rewards.spec import SPEC_HELP

    p.add_argument("--prompt", action="append", default=None, metavar="TEXT",
                   help="a prompt (repeat for several; default with --model default: its demo prompts)")
    p.add_argument("--reward", default=DEFAULT_REWARD, metavar="SPEC", help=f"reward spec: {SPEC_HELP} (default: {DEFAULT_REWARD})")
    add_beta_args(p)


def positive(text: str) -> float:
    """argparse type: a finite number > 0 (refused at parsing, before a model is loaded)."""
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def at_least_one(text: str) -> int:
    """argparse type: an integer >= 1 (refused at parsing, before a model is loaded)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def add_beta_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--beta", type=positive, default=DEFAULT_BETA, help=f"KL coefficient, > 0 (default {DEFAULT_BETA:g})")
    p.add_argument("--max-new-tokens", type=at_least_one, default=DEFAULT_MAX_NEW_TOKENS, metavar="T",
                   help=f"T: completions end at EOS or after T tokens (default {DEFAULT_MAX_NEW_TOKENS})")


def add_control_args(p: argparse.ArgumentParser) -> None:
    """--kl-budget and --moment (bayes_rlhf.control): a beta chosen for a budget, or a moment target."""
    p.add_argument("--kl-budget", type=float, default=None, metavar="KL",
                   help="choose beta so that KL(pi* || pi0), averaged over the prompts, is KL nats (replaces --beta)")
    p.add_argument("--moment", action="append", default=None, metavar="FEATURE_SPEC=VALUE",
                   help="repeatable: the I-projection pi0 exp(lambda . phi) / Z whose feature means (averaged over "
                        "the prompts) are these, features written as reward specs, e.g. regex:great=0.5 "
                        "(replaces --reward and --beta: the target has beta = 1)")


def parse_moments(values) -> list[tuple[str, float]]:
    """--moment values as (feature spec, target mean); ConfigError / RewardError before any loading."""
    import math

    from bayes_rlhf.rewards.spec import check_spec

    out = []
    for v in values or []:
        spec, sep, number = v.rpartition("=")
        try:
            value = float(number)
        except ValueError:
            value = math.nan
        if not sep or not spec or not math.isfinite(value):
            raise ConfigError(f"--moment {v!r}: expected FEATURE_SPEC=VALUE with a finite number, e.g. "
                              "regex:great=0.5")
        check_spec(spec)
        out.append((spec, value))
    return out


def load_prior(args):
    """The prior --model names (with --top-k, --dtype); prompts checked against it."""
    from bayes_rlhf.models.causal_lm import load_model

    lm = load_model(model_path(args.model), dtype=args.dtype, top_k=args.top_k)
    for prompt in prompts_of(args):
        lm.encode_prompt(prompt)  # PromptError now for a prompt the prior cannot read
    return lm


def add_out_args(p: argparse.ArgumentParser, default: str | None, what: str) -> None:
    p.add_argument("--out", default=default, metavar="DIR", help=f"{what}{'' if default is None else f' (default {default})'}")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)


def model_path(model: str):
    """The directory or hub id a --model value names ('default' is the embedded model)."""
    from bayes_rlhf.demo import DEFAULT_DIR

    return DEFAULT_DIR if model == DEFAULT_MODEL else model


def prompts_of(args) -> list[str]:
    """--prompt, or the embedded model's demo prompts; ConfigError for another model without one."""
    if args.prompt:
        return list(args.prompt)
    if args.model != DEFAULT_MODEL:
        raise ConfigError(f"with --model other than {DEFAULT_MODEL!r}, give at least one --prompt")
    from bayes_rlhf.demo import DEFAULT_PROMPTS

    return list(DEFAULT_PROMPTS)


def target_settings(args) -> dict:
    """The arguments that determine a target's posterior (what --out's marker records)."""
    return {"model": str(args.model), "top_k": args.top_k, "dtype": args.dtype, "prompts": prompts_of(args),
            "reward": args.reward, "beta": args.beta, "max_new_tokens": args.max_new_tokens}


def load_target(args):
    """The prior --model names and the Target of --reward, --beta, --max-new-tokens; prompts checked."""
    from bayes_rlhf.models.causal_lm import load_model
    from bayes_rlhf.rewards.spec import check_spec, parse_reward
    from bayes_rlhf.target import Target

    check_spec(args.reward)  # before loading anything
    lm = load_model(model_path(args.model), dtype=args.dtype, top_k=args.top_k)
    target = Target(lm, parse_reward(args.reward, lm), args.beta, args.max_new_tokens)
    for prompt in prompts_of(args):
        lm.encode_prompt(prompt)  # PromptError now for a prompt the prior cannot read
    return target


def claim(args, command: str, settings: dict) -> OutFolder | None:
    """``claim_out`` of --out (None without one): refuses, before any work, a folder holding another run."""
    if args.out is None:
        return None
    return claim_out(args.out, command, settings, overwrite=args.overwrite)


def show_prompt(prompt: str) -> str:
    return repr(prompt) if prompt else "'' (BOS only)"


def format_number(v: float) -> str:
    """A float for a table read by people: 4 decimals; scientific (3 digits) below 1e-3 or from 1e6 on;
    0 as ``0`` (also -0.0) and ``inf``, ``-inf``, ``nan`` as such."""
    if v == 0:
        return "0"
    if not math.isfinite(v):
        return str(float(v))
    return f"{v:.2e}" if abs(v) < 1e-3 or abs(v) >= 1e6 else f"{v:.4f}"


def aligned_table(header: list[str], rows: list[list[str]]) -> str:
    """Text columns padded to their widest cell, two spaces apart: the first (labels) left-aligned,
    the others (numbers) right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        cells = [str(r[0]).ljust(widths[0])] + [str(c).rjust(w) for c, w in zip(r[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _probability(p: float) -> str:
    """6 characters: 4 decimals, or 1 significant digit below 1e-4 (a tiny prior mass is not 0)."""
    return f"{p:.4f}" if p == 0 or p >= 1e-4 else f"{p:.0e}".rjust(6)


def _textless(post: ExactPosterior, i: int) -> str:
    """A completion whose text is empty: EOS at once reads '' (empty); one of special tokens only
    (padding, BOS), which text drops, names its tokens, so that such rows are told apart."""
    eos = post.vocabulary.eos_token_id
    ids = [t for t in post.completion_ids[i][post.mask[i]].tolist() if t != eos]
    if not ids:
        return "'' (empty)"
    return f"'' ({' '.join(post.vocabulary.tokenizer.convert_ids_to_tokens(ids))})"


def format_posterior(post: ExactPosterior, k: int = 5) -> str:
    """A readable summary: log Z, E[r] under prior and posterior, KL, the top completions."""
    s = post.summary()
    lines = [
        f"prompt {show_prompt(post.prompt)}: {s['num_completions']:,} completions, beta = {s['beta']:g}",
        f"  log Z = {s['log_z']:.4f}    optimum of E_q[r] - beta KL(q||pi0) = beta log Z = {s['optimal_objective']:.4f}",
        f"  E[r]: prior {s['prior_mean_reward']:.4f} -> posterior {s['posterior_mean_reward']:.4f}",
        f"  KL(pi* || pi0) = {s['kl_posterior_prior']:.4f} nats   entropy: prior {s['prior_entropy']:.3f}, "
        f"posterior {s['posterior_entropy']:.3f} nats",
    ]
    for by in ("prior", "posterior"):
        lines.append(f"  most probable under the {by}:   (prior p, posterior p, reward)")
        for row in post.top(k, by=by):
            text = repr(row["completion"]) if row["completion"] else _textless(post, row["index"])
            lines.append(f"    {text:40s} {_probability(row['prior'])}  {_probability(row['posterior'])}  "
                         f"{row['reward']:+.2f}")
    return "\n".join(lines)


def write_top_completions(path: Path, posteriors: list[ExactPosterior], k: int = 20) -> None:
    rows = []
    for post in posteriors:
        for by in ("prior", "posterior"):
            for rank, row in enumerate(post.top(k, by=by)):
                rows.append({"prompt": post.prompt, "ranked_by": by, "rank": rank + 1, **row})
    write_csv(path, rows)
