"""``train_policy``: fit an amortised policy q(x | c) to pi*(x | c) by stochastic optimisation.

One loop for every objective (the loss is a plain function from ``objectives.OBJECTIVES``)::

    policy = copy of pi0;  gen = Generator(seed);  [resume from checkpoint_dir/last]
    for step in 1..steps:
        prompts_t = the prompts (or prompts_per_step of them, drawn with gen)
        x, s(x)   = samples_per_prompt draws per prompt from the objective's source
                    (q for rloo/ppo/grpo/vargrad/dpg-policy, pi0 for dpg-prior, pi* for distill)
        r, log pi0 = target.rewards(x), prior.score(x)
        repeat inner_epochs (PPO: ppo_epochs; GRPO: grpo_epochs; else 1):
            log q, V = forward(policy, x);  loss = objective(batch, config)
            stop with TrainingDivergedError if loss or gradient is not finite
            clip grad norm; Adam step
        history row (estimates from policy samples; exact KL when an evaluator is attached)
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
import time
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from bayes_rlhf.errors import ConfigError
from bayes_rlhf.models.causal_lm import CausalLM
from bayes_rlhf.rewards.base import reward_name
from bayes_rlhf.target import Target
from bayes_rlhf.variational import checkpoint as ckpt
from bayes_rlhf.variational import rollout
from bayes_rlhf.variational.config import TrainerConfig
from bayes_rlhf.variational.divergence import TrainingDivergedError, check_finite
from bayes_rlhf.variational.distributed import LocalBackend, make_backend, require_accelerate
from bayes_rlhf.variational.history import TrainingHistory
from bayes_rlhf.variational.objectives import OBJECTIVES, PolicyBatch
from bayes_rlhf.variational.sandwich import SandwichEvaluator


def _target_fingerprint(target: Target, prompts: list[str]) -> dict:
    h = hashlib.sha256(target.prior.model.config.to_json_string().encode())
    with torch.no_grad():
        for p in target.prior.model.parameters():
            h.update(repr(round(float(p.double().sum()), 10)).encode())
    return {"prompts": prompts, "beta": target.beta, "max_new_tokens": target.max_new_tokens,
            "reward": reward_name(target.reward), "prior": h.hexdigest()[:16], "top_k": target.prior.top_k}


class _Run:
    """The mutable pieces of one run (policy, value head, log Z, optimiser, generator)."""

    def __init__(self, target: Target, prompts: list[str], config: TrainerConfig, backend=None):
        self.target, self.prompts, self.config = target, prompts, config
        self.backend = LocalBackend() if backend is None else backend
        self.policy = rollout.make_policy(target.prior, config)
        self.value_head = rollout.value_head_for(self.policy) if config.objective == "ppo" else None
        self.log_z = torch.zeros(len(prompts), dtype=torch.float64, device=self.policy.device, requires_grad=True)
        self.log_z_set = torch.zeros(len(prompts), dtype=torch.bool)
        self.params = [p for p in self.policy.model.parameters() if p.requires_grad]
        groups = [{"params": list(self.params)}]
        if self.value_head is not None:
            self.params += list(self.value_head.parameters())
            groups.append({"params": list(self.value_head.parameters()), "lr": config.value_lr})
        if config.objective == "vargrad" and config.log_z == "learned":
            groups.append({"params": [self.log_z], "lr": config.log_z_lr, "weight_decay": 0.0})
        opt = torch.optim.Adam(groups, lr=config.lr, betas=config.adam_betas, weight_decay=config.weight_decay)
        # train_model / train_value_head: the modules to call for a differentiated forward (DDP-wrapped
        # under accelerate); policy.model and value_head stay the plain modules for sampling and saving
        self.train_model, self.train_value_head, self.opt = self.backend.prepare(self.policy.model,
                                                                                 self.value_head, opt)
        self.generator = torch.Generator().manual_seed(self.backend.seed(config.seed))
        self.reward_evals = 0

    def tensors(self) -> dict:
        out = {f"model.{k}": v for k, v in self.policy.model.state_dict().items()}
        if self.value_head is not None:
            out.update({f"value_head.{k}": v for k, v in self.value_head.state_dict().items()})
        out["log_z"], out["log_z_set"] = self.log_z.detach(), self.log_z_set
        return out

    def load(self, state: dict) -> None:
        t = state["model"]
        self.policy.model.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")})
        if self.value_head is not None:
            self.value_head.load_state_dict({k[11:]: v for k, v in t.items() if k.startswith("value_head.")})
        with torch.no_grad():
            self.log_z.copy_(t["log_z"])
        self.log_z_set = t["log_z_set"].clone()
        self.opt.load_state_dict(state["optimizer"])
        i = self.backend.process_index
        if i < len(state["process_rng"]):  # each process continues its own stream
            self.generator.set_state(state["process_rng"][i])
        else:  # a checkpoint that kept process 0's generator only: the others draw fresh streams
            self.generator.manual_seed(self.backend.seed(self.config.seed, state["step"]))
        evals = int(state["history"][-1]["reward_evals"]) if state["history"] else 0
        self.reward_evals = evals // self.backend.num_processes  # the history sums the processes

    # ---------------------------------------------------------------- one step
    def step_prompts(self) -> list[int]:
        k = self.config.prompts_per_step
        if k is None or k >= len(self.prompts):
            return list(range(len(self.prompts)))
        return sorted(torch.randperm(len(self.prompts), generator=self.generator)[:k].tolist())

    def sample(self, lm: CausalLM, idx: list[int]):
        """samples_per_prompt draws from ``lm`` for each prompt in idx (rows grouped by prompt)."""
        c = lm.sample([self.prompts[i] for i in idx], self.config.samples_per_prompt,
                      self.target.max_new_tokens, self.generator)
        return c.ids, c.mask, c.prompt_index

    def collect(self, idx: list[int], draw) -> dict:
        """Samples of the step's source, with rewards, prior log-probs and proposal log-probs."""
        cfg, k = self.config, self.config.samples_per_prompt
        log_w = None
        if cfg.objective == "distill":
            parts = [draw(self.prompts[i], k, self.generator) for i in idx]
            ids = torch.cat([c.ids for c, _ in parts])
            mask = torch.cat([c.mask for c, _ in parts])
            group = torch.arange(len(idx)).repeat_interleave(torch.tensor([len(c) for c, _ in parts]))
            if any(w is not None for _, w in parts):
                log_w = torch.cat([w if w is not None else torch.zeros(len(c), dtype=torch.float64)
                                   for c, w in parts])
        elif cfg.objective == "dpg" and cfg.dpg_proposal == "prior":
            ids, mask, group = self.sample(self.target.prior, idx)
        else:
            ids, mask, group = self.sample(self.policy, idx)
        rows = [self.prompts[idx[g]] for g in group.tolist()]
        prior_lp = self.target.prior.score(rows, ids, mask).double()
        rewards = self.target.rewards(rows, ids, mask).to(prior_lp.device)
        self.reward_evals += ids.shape[0]
        return {"ids": ids, "mask": mask, "group": group.to(prior_lp.device), "rows": rows,
                "prior_logp": prior_lp, "rewards": rewards, "log_weights": log_w}

    def batch(self, data: dict, logq, values, old_logq, old_values) -> PolicyBatch:
        mask = data["mask"].to(logq.device)
        proposal = None
        if self.config.objective == "dpg":
            proposal = (data["prior_logp"] if self.config.dpg_proposal == "prior" else old_logq).sum(-1)
        log_z = None
        if self.config.objective == "vargrad" and self.config.log_z == "learned":
            log_z = self.log_z[torch.as_tensor(data["prompt_ids"], device=logq.device)]
        return PolicyBatch(logq=logq.double(), old_logq=old_logq, prior_logp=data["prior_logp"], mask=mask,
                           rewards=data["rewards"], group=data["group"], beta=float(self.target.beta),
                           proposal_log_probs=proposal, log_weights=data["log_weights"],
                           values=None if values is None else values.double(), old_values=old_values,
                           log_z=log_z)

    def init_log_z(self, data: dict, logq: torch.Tensor) -> None:
        """Start each prompt's learned log Z at its first batch's ELBO estimate mean(-f)."""
        f = (logq.detach().double().sum(-1) - data["prior_logp"].sum(-1) - data["rewards"] / self.target.beta)
        with torch.no_grad():
            for g, pid in enumerate(data["step_prompts"]):
                if not self.log_z_set[pid]:
                    sel = data["group"] == g
                    self.log_z[pid] = -f[sel].mean()
                    self.log_z_set[pid] = True
        self.backend.sync_log_z(self.log_z, self.log_z_set)

    def finish(self) -> CausalLM:
        """The trained policy, unwrapped from accelerate (DDP, bf16 forward hook), LoRA merged."""
        model = self.backend.unwrap(self.train_model)
        policy = self.policy
        if model is not policy.model:
            policy = CausalLM(model, policy.tokenizer, device=policy.device, top_k=policy.top_k,
                              support=policy.support, source=policy.source)
        return rollout.merged(policy)


def train_policy(target: Target, prompts: str | Sequence[str], config: TrainerConfig | None = None, *,
                 evaluator=None, sampler: Callable | None = None,
                 callback: Callable[[int, dict], None] | None = None) -> tuple[CausalLM, TrainingHistory]:
    """Train a policy q initialised from ``target.prior`` to approximate ``target``'s posterior.

    Parameters
    ----------
    target : Target
    prompts : str or sequence of str
        The prompts the policy is amortised over (each step uses all, or ``prompts_per_step``).
    config : TrainerConfig, optional
        Defaults to ``TrainerConfig()``.
    evaluator : None, True, ExactPosterior, list or dict of them, or SandwichEvaluator
        Exact posteriors of (some of) the prompts; their KL(q || pi*) and KL(pi* || q) are logged
        every ``eval_every`` steps. True enumerates every prompt's posterior first. For models
        too large to enumerate, a ``SandwichEvaluator`` logs the ELBO, EUBO and sampled KLs.
    sampler : callable, optional
        ``sampler(prompt, n, generator) -> Completions`` or ``(Completions, log_weights [n])``:
        samples of pi* for ``objective="distill"``, ``distill_source="given"``.
    callback : callable, optional
        ``callback(step, row)`` after each step.

    Returns
    -------
    policy : CausalLM
        The trained policy (LoRA merged), sharing the prior's tokenizer.
    history : TrainingHistory
    """
    config = TrainerConfig() if config is None else config
    if not isinstance(target, Target):
        raise ConfigError(f"target must be a bayes_rlhf.Target, got {type(target).__name__}")
    if not isinstance(config, TrainerConfig):
        raise ConfigError(f"config must be a TrainerConfig, got {type(config).__name__}")
    if config.use_accelerate:
        require_accelerate()
    prompts = rollout.check_prompts(target, prompts)
    if config.prompts_per_step is not None and config.prompts_per_step > len(prompts):
        raise ConfigError(f"TrainerConfig.prompts_per_step={config.prompts_per_step} is more than the "
                          f"{len(prompts)} prompts; lower it or set it to None")
    sandwich = evaluator if isinstance(evaluator, SandwichEvaluator) else None
    if sandwich is not None:
        unknown = sorted(set(sandwich.posterior_samples) - set(prompts))
        if unknown:
            raise ConfigError(f"the evaluator has posterior samples for {unknown}, which are not training prompts")
    backend = make_backend(config, target.prior)
    target = backend.place(target)
    posteriors = rollout.as_posteriors(None if sandwich else evaluator, target, prompts)
    draw = rollout.posterior_sampler(target, config, posteriors, sampler) if config.objective == "distill" else None
    extra = _target_fingerprint(target, prompts)
    if backend.num_processes > 1:  # each process adds a batch: resume only with as many processes
        extra["processes"] = backend.num_processes
    fingerprint, fp_dict = config.fingerprint(extra), config.fingerprint_dict(extra)

    run = _Run(target, prompts, config, backend)
    rows: list[dict] = []
    start = 0
    if config.checkpoint_dir and config.resume and ckpt.has_checkpoint(config.checkpoint_dir):
        state = ckpt.load_checkpoint(config.checkpoint_dir, fingerprint, fp_dict, TrainerConfig.defaults())
        run.load(state)
        start, rows = min(state["step"], config.steps), state["history"][: config.steps]
    main = backend.is_main  # only the main process writes files and shows progress
    history = TrainingHistory(rows, jsonl=config.log_jsonl if main else None, csv_path=config.log_csv if main else None,
                              tensorboard_dir=config.tensorboard_dir if main else None)
    loss_fn = OBJECTIVES[config.objective]
    elapsed = rows[-1]["time"] if rows else 0.0
    cpu = (rows[-1].get("cpu_time") or 0.0) if rows else 0.0
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, desc=f"train[{config.objective}]",
               disable=not (config.progress and main))
    try:
        for step in bar:
            row = backend.reduce_row(_one_step(run, step + 1, loss_fn, draw))
            elapsed, cpu = elapsed + row["time"], cpu + row["cpu_time"]
            row["time"], row["cpu_time"] = elapsed, cpu
            if (posteriors or sandwich) and ((step + 1) % config.eval_every == 0 or step + 1 == config.steps):
                row.update(rollout.evaluate(run.policy, posteriors) if posteriors
                           else sandwich.evaluate(run.policy, target))
            history.append(row)
            bar.set_postfix({k: f"{row[k]:.3g}" for k in ("objective", "kl_q_posterior") if row.get(k) is not None})
            if callback is not None:
                callback(step + 1, row)
            if config.checkpoint_dir and ((step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps):
                rngs = backend.gather_rng(run.generator)  # every process calls it; the main one writes
                if main:
                    ckpt.save_checkpoint(config.checkpoint_dir, model_tensors=run.tensors(), optimizer=run.opt,
                                         generator=run.generator, step=step + 1, fingerprint=fingerprint,
                                         config=fp_dict, history_rows=history.rows,
                                         process_rng=rngs if len(rngs) > 1 else None)
                backend.wait()
    finally:
        bar.close()
        history.close()
    return run.finish(), history


def _one_step(run: _Run, step: int, loss_fn, draw) -> dict:
    cfg, t0, c0 = run.config, time.perf_counter(), time.process_time()
    idx = run.step_prompts()
    data = run.collect(idx, draw)
    data["step_prompts"] = idx
    data["prompt_ids"] = [idx[g] for g in data["group"].tolist()]
    old_logq = old_values = None
    stats: dict = {}
    for epoch in range(cfg.inner_epochs):
        logq, values = rollout.forward(run.policy, data["rows"], data["ids"], data["mask"], run.train_value_head,
                                       cfg.bf16, model=run.train_model)
        if epoch == 0:
            old_logq = logq.detach().double()
            old_values = None if values is None else values.detach().double()
            if cfg.objective == "vargrad" and cfg.log_z == "learned":
                run.init_log_z(data, logq)
        out = loss_fn(run.batch(data, logq, values, old_logq, old_values), cfg)
        check_finite(step, out.loss, data, logq, run.backend)
        run.opt.zero_grad(set_to_none=True)
        run.backend.backward(out.loss)
        if cfg.objective == "vargrad" and cfg.log_z == "learned":
            run.backend.average_grad(run.log_z)  # not in a prepared module: DDP does not average it
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else float("inf")
        gn = run.backend.clip_grad_norm_(run.params, max_norm)
        if gn is not None and (gn != gn or gn == float("inf")):
            raise TrainingDivergedError(step, f"the gradient norm is {gn}; lower lr or set max_grad_norm")
        run.opt.step()
        stats = {k: v for k, v in out.stats.items()} | {"loss": float(out.loss.detach()), "grad_norm": gn}
    on_policy = (cfg.objective in ("rloo", "ppo", "vargrad", "grpo")
                 or (cfg.objective == "dpg" and cfg.dpg_proposal == "policy"))
    if on_policy:
        lq, lp, r = old_logq.sum(-1), data["prior_logp"].sum(-1), data["rewards"]
    else:  # the batch came from pi0 or pi*: draw policy samples for the on-policy estimates
        with torch.no_grad():
            m = _policy_metrics_batch(run, idx)
        lq, lp, r = m["logq"], m["prior_logp"].sum(-1), m["rewards"]
    tokens = int(data["mask"].sum())
    dt = time.perf_counter() - t0
    kl0 = float((lq - lp).mean())
    row = {"step": step, "objective": float(r.mean()) - run.target.beta * kl0, "mean_reward": float(r.mean()),
           "kl_prior": kl0, "entropy": float(-lq.mean()), "loss": stats.pop("loss"),
           "grad_norm": stats.pop("grad_norm"), "tokens_per_s": tokens / dt if dt > 0 else None,
           "reward_evals": run.reward_evals, "time": dt, "cpu_time": time.process_time() - c0,
           "kl_q_posterior": None, "kl_posterior_q": None,
           "log_z": float(run.log_z.detach().mean()) if cfg.objective == "vargrad" else None}
    row.update(stats)
    return row


def _policy_metrics_batch(run: _Run, idx: list[int]) -> dict:
    ids, mask, group = run.sample(run.policy, idx)
    rows = [run.prompts[idx[g]] for g in group.tolist()]
    prior_lp = run.target.prior.score(rows, ids, mask).double()
    logq = run.policy.score(rows, ids, mask).double().sum(-1)
    rewards = run.target.rewards(rows, ids, mask).to(prior_lp.device)
    run.reward_evals += ids.shape[0]
    return {"logq": logq, "prior_logp": prior_lp, "rewards": rewards}
