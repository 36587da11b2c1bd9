"""``bayes-rlhf evaluate --policy DIR``: compare a checkpoint with the exact posterior.

Any transformers causal-LM directory works (e.g. one trained with TRL), as long as it shares
the prior's tokenizer. --model, --prompt, --reward, --beta and --max-new-tokens mean what they
mean for ``bayes-rlhf exact`` (see ``bayes_rlhf.commands._common``). For each prompt::

    post = exact_posterior(Target(prior, reward, beta, T), prompt)
    log q = the policy's log-probs on post's table
    print compare(log q, post)          # KL both ways, TV, objective vs beta log Z
and with ``--out DIR`` a run directory (save_run) and its HTML report.
"""

from __future__ import annotations

import argparse

EPILOG = """examples:
  bayes-rlhf evaluate --policy runs/train/policy --out runs/eval
  bayes-rlhf evaluate --policy ./trl-output --model ./base-model --prompt "Once upon" \\
      --reward mypkg.rewards:score --beta 0.5 --max-new-tokens 3 --top-k 20
Without --model the prior is the embedded default model (with its demo prompts unless --prompt).
--reward mypkg.rewards:score uses score(prompts, completions) as the reward; a function that
builds the reward from the prior is named factory:mypkg.rewards:make_reward (make_reward(lm))."""

FIELDS = ("kl_q_posterior", "kl_posterior_q", "total_variation", "objective", "optimal_objective",
          "mean_reward", "kl_q_prior", "q_outside")


def register(subparsers) -> argparse.ArgumentParser:
    from bayes_rlhf.commands._common import add_model_args, add_out_args, add_target_args

    p = subparsers.add_parser("evaluate", help="compare a policy checkpoint with the exact posterior",
                              description="Compare a transformers checkpoint with the exact posterior of a prior "
                                          "and reward (KL both ways, TV, RL objective), in nats.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", required=True, help="checkpoint directory of the policy (model + tokenizer)")
    add_model_args(p)
    add_target_args(p)
    add_out_args(p, None, "write a run directory and report.html here")
    p.set_defaults(func=run)
    return p


def evaluate(args):
    """Load, check and compare; returns (posteriors, {label: [log q per posterior]}, comparisons)."""
    from bayes_rlhf.commands._common import load_target, prompts_of
    from bayes_rlhf.diagnostics.exact import compare
    from bayes_rlhf.diagnostics.run_dir import table_log_probs
    from bayes_rlhf.errors import TokenizerMismatchError
    from bayes_rlhf.exact import exact_posterior
    from bayes_rlhf.models import load_model

    prompts = prompts_of(args)
    target = load_target(args)
    prior = target.prior
    policy = load_model(args.policy)
    if not policy.same_tokenizer(prior):
        raise TokenizerMismatchError(f"the policy at {args.policy} has another tokenizer than the prior "
                                     f"(vocab {policy.vocab_size} vs {prior.vocab_size}, EOS {policy.eos_token_id} vs "
                                     f"{prior.eos_token_id}); evaluate it against the model it was fine-tuned from")
    posteriors, tables, comparisons = [], [], []
    for prompt in prompts:
        post = exact_posterior(target, prompt)
        lq = table_log_probs(policy, post)
        posteriors.append(post)
        tables.append(lq)
        comparisons.append(compare(lq, post))
    return posteriors, {"policy": tables}, comparisons


def run(args) -> int:
    """Print one row of exact comparisons per prompt; bad input raises typed errors (the CLI prints them)."""
    from bayes_rlhf.commands._common import claim, target_settings

    folder = claim(args, "evaluate", target_settings(args) | {"policy": str(args.policy)})
    posteriors, policies, comparisons = evaluate(args)
    print("prompt\t" + "\t".join(FIELDS))
    for post, c in zip(posteriors, comparisons):
        d = c.as_dict()
        print(repr(post.prompt) + "\t" + "\t".join(f"{d[f]:.6g}" for f in FIELDS))
    if folder is not None:
        from bayes_rlhf.report import save_run, write_report

        with folder.writing() as d:
            save_run(d, posteriors, policies=policies,
                     extra={"command": "evaluate", "policy": str(args.policy), "model": args.model})
        print(write_report(args.out))
    return 0
