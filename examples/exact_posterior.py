"""User story: "What exactly does the KL-regularised optimum of my small model look like?"

Enumerate the exact posterior pi* = pi0 exp(r / beta) / Z of the embedded default model under
its sentiment reward, read off log Z, the optimal RL objective, the exact next-token policy and
soft values, draw exact samples, and compare the prior as a policy with pi*.

    python examples/exact_posterior.py [--beta 1.0] [--prompt "the movie was"]
"""

import argparse

import torch

import bayes_rlhf as br


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default="the movie was")
    parser.add_argument("--beta", type=float, default=1.0)
    args = parser.parse_args(argv)

    lm, reward = br.default_model()
    target = br.Target(prior=lm, reward=reward, beta=args.beta, max_new_tokens=4)
    post = br.exact_posterior(target, args.prompt)
    print(f"{post.num_completions:,} completions; log Z = {post.log_z:.4f}; "
          f"best RL objective beta log Z = {post.optimal_objective:.4f}")
    print(f"E[r]: prior {post.prior_mean_reward:+.3f} -> posterior {post.mean_reward:+.3f}; "
          f"KL(pi* || pi0) = {post.kl_to_prior:.3f} nats")

    vocab = {i: t for t, i in lm.tokenizer.get_vocab().items()}
    first = post.token_posterior([])
    prior_first = post.token_prior([])
    print("exact optimal policy for the first token (prior -> posterior):")
    for tok in torch.topk(first, 5).indices.tolist():
        print(f"  {vocab[tok]:8s} {prior_first[tok]:.3f} -> {first[tok]:.3f}  "
              f"soft value V = {post.soft_value([tok]):+.3f}")

    samples = post.sample(5, generator=torch.Generator().manual_seed(0))
    print("exact posterior samples:", lm.decode(samples.ids, samples.mask))
    c = br.compare(lm, post)
    print(f"the prior as a policy: KL(q || pi*) = {c.kl_q_posterior:.3f}, objective {c.objective:.3f} "
          f"= beta (log Z - KL) = {post.beta * (post.log_z - c.kl_q_posterior):.3f}")
    return post


if __name__ == "__main__":
    main()
