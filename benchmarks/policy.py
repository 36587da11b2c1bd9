"""This toolkit's RLOO and PPO against TRL's RLOOTrainer, measured by the exact KL(q || pi*).

Same prior (the embedded default model), reward (lexicon sentiment), beta, horizon and prompt
for all three; each run is evaluated every ``--eval-every`` steps against the enumerated
posterior (292k completions at T = 4). Wall time excludes the evaluations. Reported, in one run:

    time to KL(q || pi*) <= 0.05 nats, and the KL at equal numbers of reward evaluations.

TRL runs in its own environment, never a dependency of bayes_rlhf::

    python -m venv --system-site-packages /tmp/trl-venv
    /tmp/trl-venv/bin/pip install trl==1.16.0 -c constraints.txt   # torch==2.13.0 pinned
    /tmp/trl-venv/bin/python benchmarks/policy.py --steps 300 --out benchmarks/results/policy.json

Without trl installed the TRL column is skipped.

``--smollm2 DIR`` instead measures completion tokens per second of both RLOO trainers on
SmolLM2-135M-Instruct (no exact KL there), on ``--device`` (CUDA when present, with bf16 autocast for
both); ``--random-init`` needs only DIR's config and tokenizer files (for a GPU machine without the
weights). The recipe, the same for both sides::

    /tmp/trl-venv/bin/python benchmarks/policy.py --smollm2 ~/.cache/bayes_rlhf/smollm2-135m-instruct \
        --throughput-steps 3 --repeats 2 --out benchmarks/results/policy_smollm2.json

    prompt "My favourite animal is", 8 completions per step (one RLOO group), exactly 16 tokens each
      (ours: a copy of the model and tokenizer without EOS; TRL: min_new_tokens = 16), beta 0.1,
      lr 1e-5, max_grad_norm 1, a letter-count reward; float32 on CPU (TRL's bf16 default off);
      torch.set_num_threads(--threads, default 1) for both, checked unchanged after TRL's run
    full fine-tuning (lora_rank 0) and LoRA r = 8, alpha 16, all linear layers, no dropout (both)
    TRL: RLOOTrainer at its defaults otherwise (fused AdamW, old-log-prob and reference forwards),
      with gradient checkpointing off (faster on CPU) and on (its default)
    1 warm-up step, then --throughput-steps timed steps; tokens/s = completion tokens generated in
      the timed steps / their wall time (CPU time of the process beside it); the sides run in turn,
      --repeats times, and each side's fastest run counts

Measured 2026-12-01 00:00 UTC on 2 shared cores (Xeon, AVX-512; load average 2.0-3.2 from other
jobs), one thread per side, 384 timed tokens per run, best of 2 runs per side
(results/policy_smollm2.json)::

                      ours tok/s   TRL tok/s, ckpt off / on   ours / TRL wall   per CPU second
    full fine-tuning     15.7          22.8 / 21.2             0.69x / 0.74x     0.98x / 1.06x
    LoRA r = 8           28.0          21.6 / 16.3             1.30x / 1.72x     1.28x / 1.72x

Two earlier paired runs at load 5-11 gave, per CPU second, 1.07-1.21x (full) and 1.25-1.42x
(LoRA) against TRL with checkpointing off / on, and wall ratios from 0.56x to 1.9x: on this shared
machine one side's runs differ by up to 25% in CPU time and more in wall time, so only the LoRA
lead is clear; the target of 1.5x TRL's tokens/s is not reached at equal precision and threads.

Where our step's time went (seconds per step of 128 tokens, full fine-tuning, one thread; timers
around each phase): before (wall, load 1.3), sampling 2.4, prior scoring 0.46, training forward 0.8,
backward 1.55, Adam 1.76 (torch's per-tensor loop; 0.9x TRL at 2 threads). After (CPU, load 1.6):
sampling 2.66, prior scoring 0.56, forward 0.64, backward 1.35, Adam 0.32 (fused kernel); the two
passes over prompt + completion now run the shared prompt once (124 positions instead of 160).
Sampling, 16 weight-bandwidth-bound steps at 8 rows, is half the step and 10% faster than a warmed
``generate`` for the same draws (2.7-2.9 s against 3.0-3.4 s CPU); TRL does two more no-grad
forwards per step (old and reference log-probs), scores through a tiled fused LM head and, by
default, recomputes the forward in the backward. With LoRA our backward skips the base weights'
gradients, Adam has almost nothing to update and the frozen base runs as x @ Wt in sampling, which
is where our lead comes from; sampling through peft costs 0.3-0.5 s more than the plain model.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bayes_rlhf as br  # noqa: E402
from bayes_rlhf.variational import TrainerConfig, train_policy  # noqa: E402
from bayes_rlhf.variational.evaluation import evaluate  # noqa: E402

PROMPT, BETA, T = "the movie was", 1.0, 4


def run_ours(target, post, objective, steps, eval_every, samples, lr):
    """Evaluated rows (post given) or the time of every step (post None)."""
    cfg = TrainerConfig(steps=steps, objective=objective, samples_per_prompt=samples, lr=lr,
                        eval_every=eval_every, progress=False, seed=0)
    _, hist = train_policy(target, PROMPT, cfg, evaluator=post)
    rows = hist.evaluated() if post is not None else hist.rows
    return [{"step": r["step"], "time": r["time"], "cpu_time": r["cpu_time"], "reward_evals": r["reward_evals"],
             "kl": r["kl_q_posterior"], "kl_pq": r["kl_posterior_q"]} for r in rows]


def run_trl(lm, reward, post, steps, eval_every, samples, lr):
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    def sentiment(prompts, completions, **kwargs):
        ids, mask = lm.encode_completions(completions, T)
        return reward.fn(ids, mask).tolist()

    curve, clock = [], {"eval": 0.0, "start": None, "eval_cpu": 0.0, "cpu_start": None}

    class ExactKL(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            clock["start"], clock["cpu_start"] = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, model=None, **kw):
            if post is not None and state.global_step % eval_every and state.global_step != steps:
                return
            t0, c0 = time.perf_counter(), time.process_time()
            res = {"kl_q_posterior": None, "kl_posterior_q": None}
            if post is not None:
                was_training = model.training
                res = evaluate(br.CausalLM(model, lm.tokenizer, device="cpu"), {PROMPT: post})
                model.train(was_training)
            wall = t0 - clock["start"] - clock["eval"]
            cpu = c0 - clock["cpu_start"] - clock["eval_cpu"]
            curve.append({"step": state.global_step, "time": wall, "cpu_time": cpu,
                          "reward_evals": state.global_step * samples,
                          "kl": res["kl_q_posterior"], "kl_pq": res["kl_posterior_q"]})
            clock["eval"] += time.perf_counter() - t0
            clock["eval_cpu"] += time.process_time() - c0

    import copy
    model = copy.deepcopy(lm.model)
    args = RLOOConfig(output_dir=tempfile.mkdtemp(prefix="trl-bench-"), per_device_train_batch_size=samples,
                      num_generations=samples, max_completion_length=T, learning_rate=lr, beta=BETA,
                      max_steps=steps, lr_scheduler_type="constant", warmup_steps=0, logging_steps=10 ** 9,
                      report_to="none", save_strategy="no", use_cpu=True, seed=0, bf16=False, fp16=False,
                      max_grad_norm=1.0, temperature=1.0, top_k=0, top_p=1.0, disable_dropout=True)
    data = Dataset.from_dict({"prompt": [PROMPT] * (steps * samples)})
    trainer = RLOOTrainer(model=model, reward_funcs=sentiment, args=args, train_dataset=data,
                          processing_class=lm.tokenizer, callbacks=[ExactKL()])
    trainer.train()
    return curve


def load_smollm2(model_dir, device, random_init=False):
    """SmolLM2-135M from a transformers directory; ``random_init`` keeps only its config and
    tokenizer (for a machine without the weights: throughput depends on the shapes alone)."""
    if not random_init:
        return br.load_model(model_dir, device=device, dtype=torch.float32)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)  # benchmark script: the random weights are reproducible
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir), dtype=torch.float32)
    saved = Path(tempfile.mkdtemp(prefix="smollm2-random-"))  # TRL reloads its reference model from a path
    atexit.register(shutil.rmtree, saved, ignore_errors=True)  # about 0.5 GB: removed when the script ends
    model.save_pretrained(saved)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(saved)
    return br.load_model(saved, device=device, dtype=torch.float32)


def without_eos(lm):
    """``lm``'s weights (copied) and tokenizer with no EOS: every completion is exactly T tokens long
    (TRL's side gets ``min_new_tokens = T`` for the same effect)."""
    import copy

    model, tokenizer = copy.deepcopy(lm.model), copy.deepcopy(lm.tokenizer)
    tokenizer.eos_token = None
    model.config.eos_token_id = None
    return br.CausalLM(model, tokenizer, device=lm.device)


def no_e(prompts, completions, **kwargs):
    """Reward of the throughput runs: minus the number of letters e in the completion."""
    return [-float(c.lower().count("e")) for c in completions]


def now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def stepwise(times: list[tuple], tokens: list[int], warmup: int) -> dict:
    """Completion tokens per second over the steps after ``warmup`` (``times``: ``now()`` at the
    start and after each step; ``tokens``: completion tokens generated at each step). Wall time
    counts; the process's CPU time is kept beside it (on a loaded machine it moves less)."""
    (w0, c0), (w1, c1), count = times[warmup], times[-1], sum(tokens[warmup:])
    return {"tokens": count, "time": w1 - w0, "tokens_per_s": count / (w1 - w0), "cpu_time": c1 - c0,
            "tokens_per_cpu_s": count / (c1 - c0), "steps": len(tokens) - warmup}


def ours_throughput(lm, prompt, steps, warmup, samples, T, lr, lora_rank):
    target = br.Target(prior=lm, reward=no_e, beta=0.1, max_new_tokens=T)
    cfg = TrainerConfig(steps=warmup + steps, samples_per_prompt=samples, lr=lr, progress=False, seed=0,
                        lora_rank=lora_rank)
    times, tokens, cumulative = [now()], [], [0.0]

    def tick(step, row):  # row["time"] is cumulative; tokens_per_s is the step's own
        times.append(now())
        tokens.append(round(row["tokens_per_s"] * (row["time"] - cumulative[-1])))
        cumulative.append(row["time"])

    train_policy(target, prompt, cfg, callback=tick)
    return stepwise(times, tokens, warmup)


def trl_throughput(lm, prompt, steps, warmup, samples, T, lr, lora_rank, device, checkpointing):
    import copy

    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    times, tokens = [], []

    def counted(prompts, completions, completion_ids=None, **kwargs):
        tokens.append(sum(len(c) for c in completion_ids))
        return no_e(prompts, completions)

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            times.append(now())

        def on_step_end(self, args, state, control, **kw):
            times.append(now())

    peft_config = None
    if lora_rank:
        from peft import LoraConfig

        peft_config = LoraConfig(r=lora_rank, lora_alpha=16.0, target_modules="all-linear", lora_dropout=0.0)
    args = RLOOConfig(output_dir=tempfile.mkdtemp(prefix="trl-bench-"), per_device_train_batch_size=samples,
                      num_generations=samples, max_completion_length=T, learning_rate=lr, beta=0.1,
                      max_steps=warmup + steps, lr_scheduler_type="constant", logging_steps=10 ** 9,
                      report_to="none", save_strategy="no", use_cpu=device == "cpu", bf16=device == "cuda", seed=0,
                      max_grad_norm=1.0, top_k=0, top_p=1.0, disable_dropout=True,
                      gradient_checkpointing=checkpointing, generation_kwargs={"min_new_tokens": T})
    trainer = RLOOTrainer(model=copy.deepcopy(lm.model), reward_funcs=counted, args=args,
                          train_dataset=Dataset.from_dict({"prompt": [prompt] * ((warmup + steps) * samples)}),
                          processing_class=lm.tokenizer, callbacks=[Clock()], peft_config=peft_config)
    threads = torch.get_num_threads()
    trainer.train()
    if torch.get_num_threads() != threads:
        raise RuntimeError(f"TRL changed torch's thread count from {threads} to {torch.get_num_threads()}")
    return stepwise(times, tokens, warmup)


def smollm2_throughput(model_dir, steps, samples, T, lr=1e-5, device="cpu", random_init=False, lora_ranks=(0, 8),
                       warmup=1, repeats=2, checkpointing=(False, True)):
    """Completion tokens per second of our RLOO and TRL's RLOOTrainer on a real 135M model (no
    exact KL: the space is too large), for each LoRA rank (0: full fine-tuning), the sides run in
    turn ``repeats`` times (the fastest run of each side counts). TRL runs with and without its
    default gradient checkpointing. On CUDA both train under bf16 autocast."""
    lm = load_smollm2(model_dir, device, random_init)
    ours_lm = without_eos(lm)
    prompt = "My favourite animal is"
    have_trl = importlib.util.find_spec("trl") is not None
    out = {}
    for rank in lora_ranks:
        runs = {"ours_rloo": lambda: ours_throughput(ours_lm, prompt, steps, warmup, samples, T, lr, rank)}
        if have_trl:
            for ckpt in checkpointing:
                runs[f"trl_rloo{'_ckpt' if ckpt else ''}"] = (
                    lambda c: lambda: trl_throughput(lm, prompt, steps, warmup, samples, T, lr, rank, device, c))(ckpt)
        best: dict = {}
        for rep in range(repeats):
            for name, run in runs.items():
                r = run()
                r["uptime"] = os.getloadavg()
                print(f"  lora_rank {rank} {name:14s} run {rep + 1}: {r['tokens']} tokens in {r['time']:.1f} s "
                      f"= {r['tokens_per_s']:.1f} tokens/s ({r['tokens_per_cpu_s']:.1f} per CPU s; "
                      f"load {r['uptime'][0]:.2f})", flush=True)
                if name not in best or r["tokens_per_s"] > best[name]["tokens_per_s"]:
                    best[name] = r
        out[f"lora_rank={rank}"] = best
    return out


def first_time_below(curve, level=0.05):
    """(wall time, CPU time, reward evaluations) of the first evaluation with KL <= level."""
    for row in curve:
        if row["kl"] <= level:
            return row["time"], row["cpu_time"], row["reward_evals"]
    return math.inf, math.inf, math.inf


def kl_at(curve, evals):
    """The KL of the last evaluation at or before ``evals`` reward evaluations."""
    rows = [r for r in curve if r["reward_evals"] <= evals]
    return rows[-1]["kl"] if rows else math.nan


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--samples", type=int, default=32, help="completions per step (RLOO group size)")
    ap.add_argument("--lr", type=float, default=None,
                    help="learning rate of every run (default: TrainerConfig's per-objective default, 1e-3 for TRL)")
    ap.add_argument("--methods", default="rloo,ppo,trl")
    ap.add_argument("--timing-repeats", type=int, default=2,
                    help="unevaluated reruns of each method; times are the fastest rerun's (KL is deterministic)")
    ap.add_argument("--out", default=None, help="write the curves and the summary as JSON here")
    ap.add_argument("--smollm2", default=None, metavar="DIR",
                    help="instead: tokens/s of both RLOO trainers on SmolLM2-135M from this transformers directory "
                         "(bayes_rlhf.models.smollm2.prepare_smollm2() writes one to "
                         "~/.cache/bayes_rlhf/smollm2-135m-instruct)")
    ap.add_argument("--throughput-steps", type=int, default=4, help="with --smollm2: timed steps after the warm-up")
    ap.add_argument("--warmup-steps", type=int, default=1, help="with --smollm2: untimed steps first")
    ap.add_argument("--lora-ranks", default="0,8", help="with --smollm2: LoRA ranks to measure (0: full fine-tuning)")
    ap.add_argument("--trl-checkpointing", default="off,on",
                    help="with --smollm2: TRL's gradient checkpointing (its default is on; off is faster on CPU)")
    ap.add_argument("--repeats", type=int, default=2, help="with --smollm2: runs of each side, in turn")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for every side")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="device of the --smollm2 throughput runs (the exact-KL runs stay on CPU)")
    ap.add_argument("--random-init", action="store_true",
                    help="with --smollm2: random weights from DIR's config (only config and tokenizer needed)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.smollm2:
        print(f"device {args.device}" + (" (random weights)" if args.random_init else "")
              + f", {args.threads} thread(s), 8 completions x 16 tokens per step, load {os.getloadavg()[0]:.2f}")
        res = smollm2_throughput(args.smollm2, args.throughput_steps, 8, 16, device=args.device,
                                 random_init=args.random_init, warmup=args.warmup_steps, repeats=args.repeats,
                                 lora_ranks=[int(r) for r in args.lora_ranks.split(",")],
                                 checkpointing=[c == "on" for c in args.trl_checkpointing.split(",")])
        for config, sides in res.items():
            for name, r in sides.items():
                print(f"{config:12s} {name:14s} {r['tokens']} completion tokens in {r['time']:.1f} s: "
                      f"{r['tokens_per_s']:.1f} tokens/s")
            for name in [n for n in sides if n.startswith("trl")]:
                ratio = sides["ours_rloo"]["tokens_per_s"] / sides[name]["tokens_per_s"]
                sides[f"ratio_vs_{name}"] = ratio
                cpu = sides["ours_rloo"]["tokens_per_cpu_s"] / sides[name]["tokens_per_cpu_s"]
                sides[f"cpu_ratio_vs_{name}"] = cpu
                print(f"{config:12s} ours / {name}: {ratio:.2f}x tokens/s (per CPU second: {cpu:.2f}x)")
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps({"args": vars(args), "throughput": res}, indent=1))
        return 0
    lm, reward = br.default_model(device="cpu")
    target = br.Target(prior=lm, reward=reward, beta=BETA, max_new_tokens=T)
    post = br.exact_posterior(target, PROMPT)
    prior_kl = evaluate(lm, {PROMPT: post})["kl_q_posterior"]
    print(f"prior KL(pi0 || pi*) = {prior_kl:.4f} nats over {post.num_completions:,} completions; "
          f"beta log Z = {post.optimal_objective:.4f}")
    runners = {}
    for method in args.methods.split(","):
        if method == "trl":
            if importlib.util.find_spec("trl") is None:
                print("trl is not installed here: skipping TRL (see the module docstring)")
                continue
            runners["trl_rloo"] = lambda p: run_trl(lm, reward, p, args.steps, args.eval_every, args.samples,
                                                    args.lr or 1e-3)
        else:
            runners[f"ours_{method}"] = (lambda m: lambda p: run_ours(target, p, m, args.steps, args.eval_every,
                                                                      args.samples, args.lr))(method)
    curves = {name: run(post) for name, run in runners.items()}  # exact KL along the way
    for name, c in curves.items():
        print(f"{name:10s} final KL {c[-1]['kl']:.4f} (evaluated run: {c[-1]['time']:.1f} s wall)")
    best = {}
    for rep in range(args.timing_repeats):  # interleaved reruns without evaluation, for the times
        for name, run in runners.items():
            times = run(None)
            if name not in best or times[-1]["time"] < best[name][-1]["time"]:
                best[name] = times
    for name, c in curves.items():
        if name in best:
            by_step = {r["step"]: r for r in best[name]}
            for row in c:
                row["time"], row["cpu_time"] = by_step[row["step"]]["time"], by_step[row["step"]]["cpu_time"]
        print(f"{name:10s} {args.steps} steps in {c[-1]['time']:.2f} s wall, {c[-1]['cpu_time']:.2f} s CPU "
              f"(fastest of {args.timing_repeats} unevaluated runs)")
    evals = sorted({r["reward_evals"] for c in curves.values() for r in c})
    checkpoints = [e for e in evals if e in (evals[len(evals) // 4], evals[len(evals) // 2], evals[-1])]
    summary = {}
    print(f"\n{'method':10s} {'wall to KL<=0.05':>17s} {'cpu to KL<=0.05':>16s} {'evals to KL<=0.05':>18s} "
          + " ".join(f"{'KL@' + str(e):>10s}" for e in checkpoints))
    for name, c in curves.items():
        t, cpu, e = first_time_below(c)
        summary[name] = {"time_to_005": t, "cpu_to_005": cpu, "evals_to_005": e, "total_cpu": c[-1]["cpu_time"],
                         "kl_at": {str(x): kl_at(c, x) for x in checkpoints},
                         "final_kl": c[-1]["kl"], "total_time": c[-1]["time"]}
        print(f"{name:10s} {t:16.2f}s {cpu:15.2f}s {e:18} " + " ".join(f"{kl_at(c, x):10.4f}" for x in checkpoints))
    if "trl_rloo" in summary and "ours_rloo" in summary:
        ours, theirs = summary["ours_rloo"]["time_to_005"], summary["trl_rloo"]["time_to_005"]
        if math.isfinite(ours) and math.isfinite(theirs):
            ratio = ours / theirs
            cpu_ratio = summary["ours_rloo"]["cpu_to_005"] / summary["trl_rloo"]["cpu_to_005"]
            print(f"\nours RLOO / TRL RLOO time to KL <= 0.05: wall {ratio:.3f}, CPU {cpu_ratio:.3f}")
            summary["time_ratio_rloo_vs_trl"], summary["cpu_ratio_rloo_vs_trl"] = ratio, cpu_ratio
        else:
            print("\nnot both runs reached KL <= 0.05: compare the KL columns instead")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "curves": curves, "summary": summary}, indent=1,
                                             default=str))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
