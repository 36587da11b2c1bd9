"""``bayes-rlhf train --config FILE.toml [--out DIR]``: train a policy towards pi* from a TOML file.

The file (every table but [target] optional)::

    [target]
    model = "default"            # model directory or hub id; "default" is the embedded model
    reward = "sentiment"         # a reward spec (see bayes_rlhf.rewards.spec) or "bradley_terry:DIR"
    beta = 1.0
    max_new_tokens = 4
    prompts = ["the movie was"]
    # top_k = 8, dtype = "float32"

    [trainer]                    # any TrainerConfig field
    steps = 300
    objective = "rloo"

    [evaluate]
    exact = true                 # enumerate each prompt's posterior, log exact KL both ways

Writes into DIR: policy/ (a plain transformers checkpoint), history.jsonl, history.csv,
checkpoints/, config.toml, summary.json, run.json (the command and its settings) and, with
``[evaluate] exact = true``, exact/ (a run directory: ``bayes-rlhf report DIR`` reports it).
Running the same command again resumes from DIR/checkpoints when [target] and [trainer] are
unchanged (``steps`` and the logging and checkpoint fields may change); a folder holding
anything else is refused, untouched, unless ``--overwrite`` (``overwrite=True``), which trains
afresh beside it and swaps the new run in when it is complete.
``train_from_config(path_or_dict, out)`` does the same from Python.
"""

from __future__ import annotations

import argparse
import shutil
import tomllib
from pathlib import Path

from bayes_rlhf._checks import did_you_mean
from bayes_rlhf.errors import ConfigError

EPILOG = """example run.toml (any TrainerConfig field goes in [trainer]):
  [target]
  model = "default"
  reward = "sentiment"
  beta = 1.0
  max_new_tokens = 4
  prompts = ["the movie was"]
  [trainer]
  steps = 300
  [evaluate]
  exact = true

  bayes-rlhf train --config run.toml --out runs/rloo
  (run it again after an interruption: it resumes from runs/rloo/checkpoints; with more
  [trainer] steps it trains on; other settings need another --out or --overwrite)
  bayes-rlhf report runs/rloo          (with [evaluate] exact = true)
"""

_TARGET_KEYS = {"model", "reward", "beta", "max_new_tokens", "prompts", "top_k", "dtype"}


def register(sub) -> None:
    from bayes_rlhf.commands._common import HelpFormatter, add_out_args, add_threads_arg

    p = sub.add_parser("train", help="train an amortised policy q towards the posterior pi*",
                       description="Fine-tune a copy of the prior with RLOO (the default) or another objective "
                                   "(objective = \"ppo\", \"grpo\", \"dpg\", \"distill\", \"vargrad\", "
                                   "\"fdpg\", \"bond\", \"vbon\", \"online_dpo\"; \"dpo\" and \"ipo\" "
                                   "learn from preference pairs: train_policy(preferences=...) from Python; any "
                                   "TrainerConfig field goes in the [trainer] table), log metrics and exact KL to "
                                   "pi*, and save the policy.",
                       epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--config", required=True, metavar="FILE", help="a TOML file with [target], [trainer] and [evaluate] tables")
    add_out_args(p, None, "output directory (default: runs/<config file name>)")
    add_threads_arg(p)
    p.set_defaults(func=run)


def load_config(source) -> dict:
    """The run's settings from a TOML path or a dict; unknown tables or keys are ConfigErrors."""
    if isinstance(source, dict):
        cfg = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist; give a TOML file")
        try:
            cfg = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from exc
    unknown = sorted(set(cfg) - {"target", "trainer", "evaluate"})
    if unknown:
        raise ConfigError(f"unknown table(s) {unknown} in the config; use [target], [trainer], [evaluate]"
                          f"{did_you_mean(unknown, ['target', 'trainer', 'evaluate'])}")
    if "target" not in cfg:
        raise ConfigError("the config has no [target] table; it needs at least prompts = [...]")
    for name in cfg:
        if not isinstance(cfg[name], dict):
            raise ConfigError(f"{name} must be a table ([{name}] with keys below it), got {cfg[name]!r}")
    bad = sorted(set(cfg["target"]) - _TARGET_KEYS)
    if bad:
        raise ConfigError(f"unknown [target] key(s) {bad}; valid keys: {sorted(_TARGET_KEYS)}"
                          f"{did_you_mean(bad, _TARGET_KEYS)}")
    bad = sorted(set(cfg.get("evaluate", {})) - {"exact"})
    if bad:
        raise ConfigError(f"unknown [evaluate] key(s) {bad}; valid keys: ['exact']")
    exact = cfg.get("evaluate", {}).get("exact", False)
    if not isinstance(exact, bool):
        raise ConfigError(f"[evaluate] exact must be true or false, got {exact!r}")
    return cfg | {"target": _target_table(cfg["target"])}


def _target_table(t: dict) -> dict:
    """[target] with its defaults filled in and every value's type checked."""
    from bayes_rlhf._checks import check_int, check_real
    from bayes_rlhf.commands._common import DTYPES
    from bayes_rlhf.demo import DEFAULT_BETA, DEFAULT_MAX_NEW_TOKENS, DEFAULT_MODEL, DEFAULT_REWARD

    t = {"model": DEFAULT_MODEL, "reward": DEFAULT_REWARD, "beta": DEFAULT_BETA,
         "max_new_tokens": DEFAULT_MAX_NEW_TOKENS, "top_k": None, "dtype": None} | t
    prompts = t.get("prompts")
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ConfigError("[target] prompts must be a non-empty list of strings, e.g. prompts = [\"the movie was\"]")
    for key in ("model", "reward"):
        if not isinstance(t[key], str):
            raise ConfigError(f"[target] {key} must be a string, got {t[key]!r}")
    t["beta"] = check_real(t["beta"], "[target] beta", low=0.0, low_open=True)
    t["max_new_tokens"] = check_int(t["max_new_tokens"], "[target] max_new_tokens", 1)
    if t["top_k"] is not None:
        t["top_k"] = check_int(t["top_k"], "[target] top_k", 1)
    if t["dtype"] is not None and t["dtype"] not in DTYPES:
        raise ConfigError(f"[target] dtype must be one of {list(DTYPES)}, got {t['dtype']!r}"
                          f"{did_you_mean(t['dtype'], DTYPES)}")
    return t


def _trainer_config(cfg: dict, d: Path, resume: bool):
    """The TrainerConfig of [trainer], logging and checkpointing into ``d`` unless the table says where."""
    from bayes_rlhf.variational import TrainerConfig

    paths = {"checkpoint_dir": str(d / "checkpoints"), "log_jsonl": str(d / "history.jsonl"),
             "log_csv": str(d / "history.csv")}
    return TrainerConfig.from_dict(paths | cfg.get("trainer", {}) | ({} if resume else {"resume": False}))


def _settings(cfg: dict, config) -> tuple[dict, dict]:
    """What run.json records (a rerun with equal settings resumes), and the defaults of fields that
    a marker of an earlier version may lack; the same fields the checkpoint's fingerprint covers."""
    from bayes_rlhf.variational import TrainerConfig

    exact = cfg.get("evaluate", {}).get("exact", False)  # a rerun without it would drop the run's exact/
    return ({"target": cfg["target"], "trainer": config.fingerprint_dict(), "evaluate": {"exact": exact}},
            {"trainer": TrainerConfig().fingerprint_dict(), "evaluate": {"exact": False}})


# [trainer] keys the command sets itself, inside --out: elsewhere they could overwrite files it never claimed
_OWN_PATHS = ("checkpoint_dir", "log_jsonl", "log_csv")
# objectives that learn from preference pairs, which a config file cannot give yet
_PAIR_OBJECTIVES = ("dpo", "ipo")


def train_from_config(source, out, overwrite: bool = False) -> dict:
    """Run the training a TOML file (or dict) describes, writing into ``out``; return the summary.

    Every check (the file, the tables, ``out``: see ``bayes_rlhf.io.claim_out``) comes before the
    model is loaded; a refused ``out`` is left as it was. ``overwrite`` lets the run replace a
    folder holding something else.
    """
    from bayes_rlhf.commands._common import model_path
    from bayes_rlhf.io import claim_out
    from bayes_rlhf.models.causal_lm import load_model
    from bayes_rlhf.rewards.spec import check_spec, parse_reward
    from bayes_rlhf.target import Target
    from bayes_rlhf.variational.distributed import is_main_process
    from bayes_rlhf.variational.trainer import check_train_inputs

    cfg = load_config(source)
    check_spec(cfg["target"]["reward"])
    t, out = cfg["target"], Path(out)
    own = sorted(set(cfg.get("trainer", {})) & set(_OWN_PATHS))
    if own:
        raise ConfigError(f"[trainer] {', '.join(own)}: the command keeps checkpoints and logs in --out "
                          f"({out}/checkpoints, history.jsonl, history.csv); drop the key(s) and choose --out")
    if cfg.get("trainer", {}).get("objective") in _PAIR_OBJECTIVES:
        raise ConfigError(f"objective {cfg['trainer']['objective']!r} learns from preference pairs, which a config "
                          "file cannot give: call train_policy(..., preferences=...) from Python, or use "
                          "objective = \"online_dpo\" (pairs drawn from the policy and labelled by the reward)")
    config = _trainer_config(cfg, out, True)  # field errors before loading anything
    settings, defaults = _settings(cfg, config)
    folder = claim_out(out, "train", settings, overwrite=overwrite, defaults=defaults)
    lm = load_model(model_path(t["model"]), dtype=t["dtype"], top_k=t["top_k"])
    target = Target(lm, parse_reward(t["reward"], lm), t["beta"], t["max_new_tokens"])
    if folder.mode == "replace":  # --overwrite: the old checkpoint is not resumed
        config = _trainer_config(cfg, out, False)
    check_train_inputs(target, t["prompts"], config)  # prompts (their context), sizes, the checkpoint's step
    main = is_main_process()  # under `accelerate launch`, one process writes
    with folder.writing(in_place=True, main=main) as d:
        if main and not folder.resume and not isinstance(source, dict):
            shutil.copyfile(source, d / "config.toml")
        resume = folder.mode != "replace"
        summary = _train(cfg, target, _trainer_config(cfg, d, resume), d, main,
                         recorded=_trainer_config(cfg, out, resume).to_dict())
        if main and folder.resume and not isinstance(source, dict):
            shutil.copyfile(source, d / "config.toml")  # only now: a refused resume leaves the old one
    return summary


def _train(cfg: dict, target, config, d: Path, main: bool, recorded: dict) -> dict:
    """Train into ``d`` and write its files there; ``recorded`` is the TrainerConfig summary.json shows
    (its paths name the final folder, not the staging one of an --overwrite)."""
    import torch

    from bayes_rlhf.diagnostics.exact import policy_log_probs
    from bayes_rlhf.exact.from_target import exact_posterior
    from bayes_rlhf.io import write_json
    from bayes_rlhf.diagnostics.run_dir import save_run
    from bayes_rlhf.variational import train_policy
    from bayes_rlhf.variational.evaluation import evaluate

    prompts = cfg["target"]["prompts"]
    posts = None
    if cfg.get("evaluate", {}).get("exact"):  # against the law the objective fits (bond / vbon: BoN_N, not pi*)
        fitted = config.bound_objective().fit_target(target, prompts)
        posts = {p: exact_posterior(fitted, p) for p in prompts}
    policy, history = train_policy(target, prompts, config, evaluator=posts)
    if not main:
        return {}
    policy.save_pretrained(d / "policy")
    summary = {"steps": len(history), "final": history.last, "prompts": prompts, "beta": target.beta,
               "max_new_tokens": target.max_new_tokens, "trainer": recorded}
    shutil.rmtree(d / "exact", ignore_errors=True)
    if posts:
        with torch.no_grad():  # the final policy's log q on each table, walked once for the summary and exact/
            tables = {p: policy_log_probs(policy, post) for p, post in posts.items()}
        summary["exact"] = evaluate(tables, posts) | {"beta_log_z": {p: q.optimal_objective for p, q in posts.items()}}
        save_run(d / "exact", list(posts.values()), policies={config.objective: list(tables.values())},
                 histories={config.objective: history}, extra={"command": "train", "model": cfg["target"]["model"],
                                                               "reward": cfg["target"]["reward"]})
    write_json(d / "summary.json", summary)
    return summary


def run(args) -> int:
    from bayes_rlhf.commands._common import command_threads

    out = args.out or str(Path("runs") / Path(args.config).stem)
    model = load_config(args.config)["target"]["model"]  # its ConfigErrors are train_from_config's
    with command_threads(getattr(args, "threads", None), model):
        summary = train_from_config(args.config, out, overwrite=args.overwrite)
    last = summary["final"]
    line = f"trained {summary['steps']} steps: objective {last['objective']:.4f}, KL(q||pi0) {last['kl_prior']:.4f}"
    if "exact" in summary:
        line += f", exact KL(q||pi*) {summary['exact']['kl_q_posterior']:.4f}"
    print(line)
    print(f"wrote {out}" + (f" (`bayes-rlhf report {out}` reports exact/)" if "exact" in summary else ""))
    return 0
