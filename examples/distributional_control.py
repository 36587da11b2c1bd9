"""User story: "I want half of the completions to be positive, and no more change to the model than that."

Distributional control (Khalifa et al., 2021): the closest distribution to the prior pi0 in
KL(. || pi0) whose fraction of positive completions is 0.5 is the I-projection
pi0 exp(lambda phi) / Z with phi = 1[sentiment > 0]. Two prompts share one lambda (the fraction
is averaged over them). The same distribution is the RLHF posterior of the reward phi at
beta = 1 / lambda, which ``beta_for_reward`` finds; ``beta_for_kl`` picks beta for a KL budget.

    python examples/distributional_control.py [--fraction 0.5] [--kl 0.5] [--max-new-tokens 4]
"""

import argparse

import torch

import bayes_rlhf as br

PROMPTS = ["the movie was", "the food is"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=0.5, help="target fraction of positive completions")
    parser.add_argument("--kl", type=float, default=0.5, help="KL budget for the sentiment reward (nats)")
    parser.add_argument("--max-new-tokens", type=int, default=4)
    args = parser.parse_args(argv)

    lm, sentiment = br.default_model()
    positive = br.TokenReward(lambda ids, mask: (sentiment.fn(ids, mask) > 0).double(), name="positive")

    # the I-projection: exact, one lambda for both prompts
    target = br.moment_target(lm, PROMPTS, features=[positive], moments=[args.fraction],
                              max_new_tokens=args.max_new_tokens)
    lam = target.reward.coefficients[0]
    fit = target.reward.fit
    print(f"lambda = {lam:.4f}; fraction positive averaged over the prompts = {fit.achieved[0]:.6f}; "
          f"KL(pi* || pi0) = {fit.kl_to_prior:.4f} nats (reachable fractions {fit.reachable[0]})")
    fractions = {}
    for prompt in PROMPTS:
        post = br.exact_posterior(target, prompt)
        phi = positive.fn(post.completion_ids, post.mask).double()
        prior = float(post.prior_log_probs.exp() @ phi)
        fractions[prompt] = float(post.probs @ phi)
        samples = post.sample(4, generator=torch.Generator().manual_seed(0))
        print(f"  {prompt!r}: positive {prior:.3f} under pi0 -> {fractions[prompt]:.3f} under pi*; "
              f"samples {lm.decode(samples.ids, samples.mask)}")

    # the same distribution as an RLHF posterior of phi: beta = 1 / lambda
    beta = br.beta_for_reward(br.Target(lm, positive, 1.0, args.max_new_tokens), PROMPTS, mean_reward=args.fraction)
    print(f"beta_for_reward(reward = positive, E[r] = {args.fraction}) = {float(beta):.6f}; 1 / lambda = {1 / lam:.6f}")

    # a KL budget for the sentiment reward itself
    budget = br.beta_for_kl(br.Target(lm, sentiment, 1.0, args.max_new_tokens), PROMPTS, kl=args.kl)
    print(f"beta_for_kl(reward = sentiment, KL = {args.kl}) = {float(budget):.4f}: "
          f"E[sentiment] = {budget.mean_reward:.4f}, KL = {budget.kl:.6f} nats (averaged over the prompts)")
    return {"target": target, "fractions": fractions, "beta_for_reward": beta, "beta_for_kl": budget}


if __name__ == "__main__":
    main()
