"""User story: "Fine-tune a policy with KL-regularised RL and see how close it gets to the posterior."

Train q_theta by RLOO (reverse KL, i.e. KL-regularised RL) on the default model, with the exact
posterior attached as an evaluator, then compare the trained policy with pi* exactly.

    python examples/train_and_compare.py [--steps 150] [--out runs/example_policy]
"""

import argparse

import bayes_rlhf as br
from bayes_rlhf.variational import TrainerConfig, train_policy


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--objective", default="rloo", choices=["rloo", "ppo", "dpg", "distill", "vargrad", "grpo"])
    parser.add_argument("--out", default=None, help="save the trained policy here (plain transformers)")
    args = parser.parse_args(argv)

    lm, reward = br.default_model(device="cpu")
    target = br.Target(prior=lm, reward=reward, beta=1.0, max_new_tokens=4)
    prompt = "the movie was"
    post = br.exact_posterior(target, prompt)
    before = br.compare(lm, post)
    policy, history = train_policy(target, [prompt], TrainerConfig(steps=args.steps, objective=args.objective),
                                   evaluator=post)
    after = br.compare(policy, post)
    print(f"KL(q || pi*): prior {before.kl_q_posterior:.4f} -> trained {after.kl_q_posterior:.4f} nats")
    print(f"RL objective: prior {before.objective:.4f} -> trained {after.objective:.4f} "
          f"(optimum beta log Z = {post.optimal_objective:.4f})")
    print(f"{len(history)} steps logged; last row: "
          + ", ".join(f"{k}={v:.4g}" for k, v in history.rows[-1].items() if isinstance(v, float)))
    if args.out:
        policy.save_pretrained(args.out)
        print(f"saved policy to {args.out}")
    return before, after, history


if __name__ == "__main__":
    main()
