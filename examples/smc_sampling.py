"""User story: "Sample from the posterior of a model without fine-tuning it, and know how well I did."

Run token-level SMC (bootstrap, and twisted with the exact soft values) and importance sampling on
the default model, and check their log Z estimates and expectations against the exact answer.
On a model too large to enumerate, the same calls work; drop the exact twist and the comparison.

    python examples/smc_sampling.py [--particles 256]
"""

import argparse
import math

import torch

import bayes_rlhf as br


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=256)
    parser.add_argument("--prompt", default="the movie was")
    args = parser.parse_args(argv)

    lm, reward = br.default_model()
    target = br.Target(prior=lm, reward=reward, beta=1.0, max_new_tokens=4)
    post = br.exact_posterior(target, args.prompt)
    print(f"exact: log Z = {post.log_z:.4f}, E[r] = {post.mean_reward:.4f}")

    g = torch.Generator().manual_seed(0)
    runs = {
        "importance (prior proposal)": br.importance_sample(target, args.prompt, args.particles, generator=g),
        "SMC bootstrap": br.smc(target, args.prompt, args.particles, generator=g),
        "SMC, exact twist + proposal": br.smc(target, args.prompt, args.particles, proposal=post, twist=post,
                                             generator=g),
    }
    for name, ws in runs.items():
        w = torch.softmax(ws.log_weights, 0)
        mean_r = float((w * ws.rewards).sum())
        print(f"{name:28s} log Z = {float(ws.log_z[0]):.4f} (error {float(ws.log_z[0]) - post.log_z:+.4f})  "
              f"ESS = {float(ws.ess[0]) if torch.is_tensor(ws.ess) else ws.ess:7.1f}  E[r] = {mean_r:.4f}")
    diag = br.weight_diagnostics(runs["importance (prior proposal)"].log_weights)
    print(f"importance weights: PSIS k-hat = {diag.khat:.2f}")
    best = br.best_of_n(target, args.prompt, n=16, num_samples=4, generator=g)
    print("best-of-16 draws:", lm.decode(best.ids, best.mask))
    assert math.isfinite(float(runs["SMC bootstrap"].log_z[0]))
    return runs, post


if __name__ == "__main__":
    main()
