"""``bayes-rlhf evaluate --policy DIR``: compare a checkpoint with the exact posterior.

Any transformers causal-LM directory works (e.g. one trained with TRL), as long as it shares
the prior's tokenizer. For each prompt::

    post = exact_posterior(Target(prior, reward, beta, T), prompt)
    log q = the policy's log-probs on post's table
    print compare(log q, post)          # KL both ways, TV, objective vs beta log Z
and with ``--out DIR`` a run directory (save_run) and its HTML report.
"""

from __future__ import annotations

import argparse
import importlib

from bayes_rlhf.errors import ConfigError

EPILOG = """examples:
  bayes-rlhf evaluate --policy runs/train/policy --out runs/eval
  bayes-rlhf evaluate --policy ./trl-output --model ./base-model --prompt "Once upon" \\
      --reward mypkg.rewards:make_reward --beta 0.5 --max-new-tokens 3 --top-k 20
Without --model the prior is the embedded default model with its sentiment reward."""

FIELDS = ("kl_q_posterior", "kl_posterior_q", "total_variation", "objective", "optimal_objective",
          "mean_reward", "kl_q_prior", "q_outside")


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("evaluate", help="compare a policy checkpoint with the exact posterior",
                              description="Compare a transformers checkpoint with the exact posterior of a prior "
                                          "and reward (KL both ways, TV, RL objective), in nats.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", required=True, help="checkpoint directory of the policy (model + tokenizer)")
    p.add_argument("--model", default=None, help="prior checkpoint (default: the embedded default model)")
    p.add_argument("--prompt", action="append", default=None,
                   help="prompt (repeatable; default: the default model's demo prompts)")
    p.add_argument("--reward", default="sentiment",
                   help="'sentiment' (lexicon reward) or 'module:factory' with factory(lm) -> reward")
    p.add_argument("--beta", type=float, default=None, help="KL coefficient (default: the default model's)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="completion length T (default: the default model's DEFAULT_MAX_NEW_TOKENS)")
    p.add_argument("--top-k", type=int, default=None, help="truncate the prior to its top-k tokens per step")
    p.add_argument("--out", default=None, help="write a run directory and report.html here")
    p.set_defaults(func=run)
    return p


def _reward(spec: str, lm):
    if spec == "sentiment":
        from bayes_rlhf.models.default_model import sentiment_reward

        try:
            return sentiment_reward(lm)
        except KeyError as exc:
            raise ConfigError(f"the sentiment reward needs the word {exc} in the prior's vocabulary; pass "
                              "--reward module:factory for this model") from None
    module, _, attr = spec.partition(":")
    if not attr:
        raise ConfigError(f"--reward must be 'sentiment' or 'module:factory', got {spec!r}")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import the reward factory {spec!r}: {exc}") from None
    return factory(lm)


def evaluate(args):
    """Load, check and compare; returns (posteriors, {label: [log q per posterior]}, comparisons)."""
    from bayes_rlhf.diagnostics.exact import compare
    from bayes_rlhf.diagnostics.run_dir import table_log_probs
    from bayes_rlhf.errors import TokenizerMismatchError
    from bayes_rlhf.exact import exact_posterior
    from bayes_rlhf.models import load_model
    from bayes_rlhf.models.default_model import DEFAULT_BETA, DEFAULT_MAX_NEW_TOKENS, DEFAULT_PROMPTS, default_model
    from bayes_rlhf.target import Target

    if args.model is None:
        prior, _ = default_model()
        prompts = args.prompt or list(DEFAULT_PROMPTS)
    else:
        if not args.prompt:
            raise ConfigError("with --model, give at least one --prompt")
        prior, prompts = load_model(args.model), args.prompt
    if args.top_k is not None:
        prior = prior.with_top_k(args.top_k)
    policy = load_model(args.policy)
    if not policy.same_tokenizer(prior):
        raise TokenizerMismatchError(f"the policy at {args.policy} has another tokenizer than the prior "
                                     f"(vocab {policy.vocab_size} vs {prior.vocab_size}, EOS {policy.eos_token_id} vs "
                                     f"{prior.eos_token_id}); evaluate it against the model it was fine-tuned from")
    target = Target(prior, _reward(args.reward, prior), args.beta if args.beta is not None else DEFAULT_BETA,
                    args.max_new_tokens if args.max_new_tokens is not None else DEFAULT_MAX_NEW_TOKENS)
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
    posteriors, policies, comparisons = evaluate(args)
    print("prompt\t" + "\t".join(FIELDS))
    for post, c in zip(posteriors, comparisons):
        d = c.as_dict()
        print(repr(post.prompt) + "\t" + "\t".join(f"{d[f]:.6g}" for f in FIELDS))
    if args.out:
        from bayes_rlhf.report import save_run, write_report

        save_run(args.out, posteriors, policies=policies,
                 extra={"command": "evaluate", "policy": str(args.policy), "model": args.model or "default"})
        print(write_report(args.out))
    return 0
