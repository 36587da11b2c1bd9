"""``train_policy``: fit an amortised policy q(x | c) to pi*(x | c) by stochastic optimisation.

One loop for every objective; the objective's record (``objectives/``) says where its samples come
from, what it needs and how many gradient steps a batch takes (``step.py`` is one step)::

    policy = copy of pi0;  gen = Generator(seed);  [resume from checkpoint_dir/last]
    for step in 1..steps:
        row = train_step(...)      # sample, score, inner_epochs updates, estimates
        exact KL every eval_every steps when an evaluator is attached
        [kl_target: beta of the next step from this step's KL(q || pi0) estimate (kl_control.py)]
        checkpoint every checkpoint_every steps and at the end

Several GPUs or nodes: set ``use_accelerate = true`` (``pip install accelerate``) and start the same
script or command under Hugging Face ``accelerate launch``; each process trains on its own samples
and only the main process writes files (``distributed.py`` says what changes). For example::

    accelerate launch --multi_gpu --num_processes 4 -m bayes_rlhf.cli train --config run.toml
    accelerate launch --num_machines 2 --machine_rank 0 --main_process_ip HOST --num_processes 16 \
        my_training_script.py
"""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from bayes_rlhf.errors import ConfigError, PromptError
from bayes_rlhf.models.causal_lm import CausalLM
from bayes_rlhf.rewards.base import reward_name
from bayes_rlhf.samplers._common import as_prompts
from bayes_rlhf.target import Target
from bayes_rlhf.variational import checkpoint as ckpt
from bayes_rlhf.variational.config import TrainerConfig
from bayes_rlhf.variational.distributed import make_backend, require_accelerate
from bayes_rlhf.variational.guards import TrainingDivergedError  # noqa: F401 (raised by the step)
from bayes_rlhf.variational.evaluation import Evaluator, as_evaluator
from bayes_rlhf.variational.history import TrainingHistory
from bayes_rlhf.variational.kl_control import make_kl_control
from bayes_rlhf.variational.preferences import as_preferences
from bayes_rlhf.variational.sources import POLICY, check_source, make_draw
from bayes_rlhf.variational.state import RunState
from bayes_rlhf.variational.step import Draws, train_step


def check_prompts(target: Target, prompts) -> list[str]:
    """The prompts as a list, each checked against the tokenizer, no duplicates, before any work."""
    prompts = as_prompts(target, [] if prompts is None else prompts)
    if len(set(prompts)) != len(prompts):
        raise PromptError("prompts has duplicates; give each prompt once (weight by repeating a step instead)")
    return prompts


def train_policy(target: Target, prompts: str | Sequence[str], config: TrainerConfig | None = None, *,
                 evaluator=None, sampler: Callable | None = None, preferences=None,
                 callback: Callable[[int, dict], None] | None = None) -> tuple[CausalLM, TrainingHistory]:
    """Train a policy q initialised from ``target.prior`` to approximate ``target``'s posterior.

    Parameters
    ----------
    target : Target
    prompts : str or sequence of str
        The prompts the policy is amortised over (each step uses all, or ``prompts_per_step``).
    config : TrainerConfig, optional
        Defaults to ``TrainerConfig()``.
    evaluator : None, True, ExactPosterior, list or dict of them, SandwichEvaluator, or an Evaluator
        Exact posteriors of (some of) the prompts; their KL(q || pi*) and KL(pi* || q) are logged
        every ``eval_every`` steps. True enumerates every prompt's posterior first. For models
        too large to enumerate, a ``SandwichEvaluator`` logs the ELBO, EUBO and sampled KLs.
        "bond" and "vbon" fit the best-of-N law: True measures against it, as does
        ``bon_posterior(post, n)`` (a posterior of ``target`` would measure against pi*).
    sampler : callable, optional
        ``sampler(prompt, n, generator) -> Completions``, ``(Completions, log_weights [n])`` or
        ``WeightedSamples``: samples of pi* for ``objective="distill"``, ``distill_source="given"``.
    preferences : Preferences, datasets.Dataset or sequence of (prompt, chosen, rejected) str, optional
        Preference pairs for ``objective="dpo"`` or ``"ipo"`` (a Dataset with those columns;
        ``sample_preferences`` labels pi0's samples by a Bradley-Terry model of the reward), with
        pairs for every prompt.
    callback : callable, optional
        ``callback(step, row)`` after each step.

    Returns
    -------
    policy : CausalLM
        The trained policy (LoRA merged), sharing the prior's tokenizer.
    history : TrainingHistory
    """
    config = TrainerConfig() if config is None else config
    prompts, evaluator, objective, pairs = check_train_inputs(target, prompts, config, evaluator=evaluator,
                                                              sampler=sampler, preferences=preferences)
    backend = make_backend(config, target.prior)
    fixed_beta = evaluator if evaluator is not None and not evaluator.follows_beta else None
    control = make_kl_control(config, len(prompts), backend.num_processes, fixed_beta)  # None: beta fixed
    target = backend.place(target)
    target = objective.fit_target(target, prompts)  # the target the objective fits (best-of-N: its law)
    posteriors = evaluator.prepare(target, prompts) if evaluator is not None else None
    extra = _target_fingerprint(target, prompts)
    if backend.num_processes > 1:  # each process adds a batch: resume only with as many processes
        extra["processes"] = backend.num_processes
    if pairs is not None:
        extra["preferences"] = pairs.fingerprint()
    run = RunState(target, prompts, config, objective, backend)
    k = config.samples_per_prompt
    draws = Draws(make_draw(objective.source, target, run.policy, k, posteriors, sampler, pairs),
                  None if objective.on_policy else make_draw(POLICY, target, run.policy, k))
    evaluation = (lambda: evaluator.evaluate(run.policy, run.target)) if evaluator is not None else None
    start, rows = _resume(run, config, extra)
    if control is not None:
        control.resume(run, rows)
    main = backend.is_main  # only the main process writes files and shows progress
    history = TrainingHistory(rows, jsonl=config.log_jsonl if main else None, csv_path=config.log_csv if main else None,
                              tensorboard_dir=config.tensorboard_dir if main else None)
    _loop(run, draws, history, start, extra, evaluation, callback, control)
    return run.finish(), history


def _loop(run: RunState, draws: Draws, history: TrainingHistory, start: int, extra: dict,
          evaluation: Callable[[], dict] | None, callback, control=None) -> None:
    """Steps ``start + 1 .. config.steps``: train, evaluate, log, [move beta,] call back, checkpoint."""
    config = run.config
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, desc=f"train[{config.objective}]",
               disable=not (config.progress and run.backend.is_main))
    try:
        for step in bar:
            row = _timed(run.backend.reduce_row(train_step(run, step + 1, draws)), history)
            row["beta"] = run.target.beta  # the step's; the KL controller (kl_control.py) sets the next
            if evaluation and ((step + 1) % config.eval_every == 0 or step + 1 == config.steps):
                row.update(evaluation())
            if control is not None:
                control.after_step(run, row)
            history.append(row)
            bar.set_postfix({k: f"{row[k]:.3g}" for k in ("objective", "kl_q_posterior") if row.get(k) is not None})
            if callback is not None:
                callback(step + 1, row)
            if config.checkpoint_dir and ((step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps):
                _save(run, step + 1, history, extra)
    finally:
        bar.close()
        history.close()


def check_train_inputs(target, prompts, config, *, evaluator=None, sampler=None, preferences=None):
    """Every check ``train_policy`` makes on its arguments, before any work (a command runs it before it
    writes anything): (prompts as a list, the evaluator as one, the bound objective, the preference pairs)."""
    prompts, evaluator = _check_inputs(target, prompts, config, evaluator)
    objective = config.bound_objective()
    pairs = None if preferences is None else as_preferences(preferences, target.prior, target.max_new_tokens)
    check_source(objective.source, sampler, pairs, prompts)
    return prompts, evaluator, objective, pairs


def _check_inputs(target, prompts, config, evaluator) -> tuple[list[str], Evaluator | None]:
    """The arguments' own checks: the prompts as a list, and the evaluator as one."""
    if not isinstance(target, Target):
        raise ConfigError(f"target must be a bayes_rlhf.Target, got {type(target).__name__}")
    if not isinstance(config, TrainerConfig):
        raise ConfigError(f"config must be a TrainerConfig, got {type(config).__name__}")
    config.__post_init__()  # a field set after construction is checked too (e.g. config.lr = -1)
    _check_paths(config)
    if config.use_accelerate:
        require_accelerate()
    prompts = check_prompts(target, prompts)
    if config.prompts_per_step is not None and config.prompts_per_step > len(prompts):
        raise ConfigError(f"TrainerConfig.prompts_per_step={config.prompts_per_step} is more than the "
                          f"{len(prompts)} prompts; lower it or set it to None")
    evaluator = as_evaluator(evaluator)
    if evaluator is not None:
        evaluator.check(prompts)
    done = ckpt.checkpoint_step(config.checkpoint_dir) if config.resume else None
    if done is not None and done > config.steps:
        raise ConfigError(f"checkpoint_dir {config.checkpoint_dir!r} holds a checkpoint at step {done}, past "
                          f"steps={config.steps}: training does not go back. Give steps >= {done} to resume it "
                          "(equal: nothing to train), another checkpoint_dir, or resume=False to start over "
                          "(the CLI: another --out, or --overwrite)")
    return prompts, evaluator


def _check_paths(config: TrainerConfig) -> None:
    """ConfigError, before any work, for an output path that could not be written at the first save:
    a folder setting that is a file (or under one), a log file setting that is a folder (or under a file)."""
    from pathlib import Path

    from bayes_rlhf.io import under_a_file

    for name in ("checkpoint_dir", "tensorboard_dir"):
        value = getattr(config, name)
        if value is not None and ((Path(value).exists() and not Path(value).is_dir()) or under_a_file(Path(value))):
            raise ConfigError(f"TrainerConfig.{name}={value!r} is a file or lies under one; give a folder's path")
    for name in ("log_jsonl", "log_csv"):
        value = getattr(config, name)
        if value is not None and (Path(value).is_dir() or under_a_file(Path(value))):
            raise ConfigError(f"TrainerConfig.{name}={value!r} is a folder or lies under a file; give a file's path")


def _target_fingerprint(target: Target, prompts: list[str]) -> dict:
    h = hashlib.sha256(target.prior.model.config.to_json_string().encode())
    with torch.no_grad():
        for p in target.prior.model.parameters():
            h.update(repr(round(float(p.double().sum()), 10)).encode())
    return {"prompts": prompts, "beta": target.beta, "max_new_tokens": target.max_new_tokens,
            "reward": reward_name(target.reward), "prior": h.hexdigest()[:16], "top_k": target.prior.top_k}


def _resume(run: RunState, config: TrainerConfig, extra: dict) -> tuple[int, list[dict]]:
    """(steps done, history rows) of the checkpoint in ``checkpoint_dir`` (restored into ``run``), or (0, [])."""
    if not (config.checkpoint_dir and config.resume and ckpt.has_checkpoint(config.checkpoint_dir)):
        return 0, []
    state = ckpt.load_checkpoint(config.checkpoint_dir, config.fingerprint(extra), config.fingerprint_dict(extra),
                                 TrainerConfig.defaults())
    run.load(state)
    return state["step"], state["history"]  # never past config.steps (check_train_inputs)


def _timed(row: dict, history: TrainingHistory) -> dict:
    """The step's row with cumulative wall and CPU times (continuing the history's)."""
    last = history.rows[-1] if history.rows else {}
    row["time"] = (last.get("time") or 0.0) + row["time"]
    row["cpu_time"] = (last.get("cpu_time") or 0.0) + row["cpu_time"]
    return row


def _save(run: RunState, step: int, history: TrainingHistory, extra: dict) -> None:
    cfg = run.config
    rngs = run.backend.gather_rng(run.generator)  # every process calls it; the main one writes
    if run.backend.is_main:
        ckpt.save_checkpoint(cfg.checkpoint_dir, model_tensors=run.tensors(), optimizer=run.opt,
                             generator=run.generator, step=step, fingerprint=cfg.fingerprint(extra),
                             config=cfg.fingerprint_dict(extra), history_rows=history.rows,
                             process_rng=rngs if len(rngs) > 1 else None)
    run.backend.wait()
