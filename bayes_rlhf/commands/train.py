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
checkpoints/ (resumed when the same command runs again), config.toml and summary.json.
``train_from_config(path_or_dict, out)`` does the same from Python.
"""

from __future__ import annotations

import argparse
import shutil
import tomllib
from pathlib import Path

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
  (run it again after an interruption: it resumes from runs/rloo/checkpoints)
"""

_TARGET_KEYS = {"model", "reward", "beta", "max_new_tokens", "prompts", "top_k", "dtype"}


def register(sub) -> None:
    p = sub.add_parser("train", help="train an amortised policy q towards the posterior pi*",
                       description="Fine-tune a copy of the prior with RLOO, PPO, DPG, distillation or "
                                   "trajectory balance (TrainerConfig fields in the [trainer] table), "
                                   "log metrics and exact KL to pi*, and save the policy.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="a TOML file with [target], [trainer] and [evaluate] tables")
    p.add_argument("--out", default=None, help="output directory (default: runs/<config file name>)")
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
        raise ConfigError(f"unknown table(s) {unknown} in the config; use [target], [trainer], [evaluate]")
    if "target" not in cfg:
        raise ConfigError("the config has no [target] table; it needs at least prompts = [...]")
    bad = sorted(set(cfg["target"]) - _TARGET_KEYS)
    if bad:
        raise ConfigError(f"unknown [target] key(s) {bad}; valid keys: {sorted(_TARGET_KEYS)}")
    bad = sorted(set(cfg.get("evaluate", {})) - {"exact"})
    if bad:
        raise ConfigError(f"unknown [evaluate] key(s) {bad}; valid keys: ['exact']")
    return cfg


def _reward(spec: str, lm):
    from bayes_rlhf.rewards.spec import parse_reward

    return parse_reward(spec, lm)


def train_from_config(source, out) -> dict:
    """Run the training a TOML file (or dict) describes, writing into ``out``; return the summary."""
    from bayes_rlhf.exact.solve import exact_posterior
    from bayes_rlhf.io import write_json
    from bayes_rlhf.models.causal_lm import load_model
    from bayes_rlhf.models.default_model import DEFAULT_DIR
    from bayes_rlhf.target import Target
    from bayes_rlhf.variational import TrainerConfig, train_policy
    from bayes_rlhf.variational.distributed import is_main_process
    from bayes_rlhf.variational.rollout import evaluate

    cfg = load_config(source)
    t = cfg["target"]
    prompts = t.get("prompts")
    if not isinstance(prompts, list) or not prompts:
        raise ConfigError("[target] prompts must be a non-empty list of strings, e.g. prompts = [\"the movie was\"]")
    out = Path(out)
    trainer = {"checkpoint_dir": str(out / "checkpoints"), "log_jsonl": str(out / "history.jsonl"),
               "log_csv": str(out / "history.csv")} | cfg.get("trainer", {})
    config = TrainerConfig.from_dict(trainer)  # field errors before loading anything
    model = t.get("model", "default")
    lm = load_model(DEFAULT_DIR if model == "default" else model, dtype=t.get("dtype"), top_k=t.get("top_k"))
    target = Target(lm, _reward(t.get("reward", "sentiment"), lm), t.get("beta", 1.0), t.get("max_new_tokens", 4))
    for p in prompts:
        lm.encode_prompt(p)
    out.mkdir(parents=True, exist_ok=True)
    if not isinstance(source, dict):
        shutil.copyfile(source, out / "config.toml")
    posts = {p: exact_posterior(target, p) for p in prompts} if cfg.get("evaluate", {}).get("exact") else None
    policy, history = train_policy(target, prompts, config, evaluator=posts)
    if not is_main_process():  # under `accelerate launch`, one process writes
        return {}
    policy.save_pretrained(out / "policy")
    summary = {"steps": len(history), "final": history.last, "prompts": prompts, "beta": target.beta,
               "max_new_tokens": target.max_new_tokens, "trainer": config.to_dict()}
    if posts:
        summary["exact"] = evaluate(policy, posts) | {"beta_log_z": {p: q.optimal_objective for p, q in posts.items()}}
    write_json(out / "summary.json", summary)
    return summary


def run(args) -> int:
    out = args.out or str(Path("runs") / Path(args.config).stem)
    summary = train_from_config(args.config, out)
    last = summary["final"]
    line = f"trained {summary['steps']} steps: objective {last['objective']:.4f}, KL(q||pi0) {last['kl_prior']:.4f}"
    if "exact" in summary:
        line += f", exact KL(q||pi*) {summary['exact']['kl_q_posterior']:.4f}"
    print(line)
    print(f"wrote {out}")
    return 0
