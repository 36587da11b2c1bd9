"""``bayes-rlhf evaluate --policy DIR``: compare a checkpoint with the exact posterior.

Any transformers causal-LM directory works (e.g. one trained with TRL), as long as it shares
the prior's tokenizer. --model, --prompt, --reward, --beta and --max-new-tokens mean what they
mean for ``bayes-rlhf exact`` (see ``bayes_rlhf.commands._common``). For each prompt::

    post = exact_posterior(Target(prior, reward, beta, T), prompt)
    log q = the policy's log-probs on post's table
    print compare(log q, post)          # KL both ways, TV, objective vs beta log Z
as an aligned table (4 decimals; ``--tsv``: tab-separated, 6 significant digits, for scripts),
and with ``--out DIR`` a run directory (save_run) and its HTML report.

Against a top-k-truncated prior (``--top-k K``) a checkpoint is read on the target's support by
default (``--policy-support target``): its logits restricted to the prior's top-k set at every
prefix and renormalised, which is how bayes_rlhf trains against such a target. Two readings are
printed, labelled: the restricted policy's KLs, TV and objective, and the plain checkpoint's mass
outside the support (``plain_q_outside``). ``--policy-support own`` reads the checkpoint as it
records itself (``support.json`` of a bayes_rlhf policy, else plain), ``none`` as plain
transformers reads it (KL(q || pi*) is then infinite whenever that mass is > 0).
"""

from __future__ import annotations

import argparse

EPILOG = """examples:
  bayes-rlhf evaluate --policy runs/rloo/policy --out runs/eval      (the policy of `train`'s example)
  bayes-rlhf evaluate --policy demo_out/policy --tsv > eval.tsv     (tab-separated, for scripts)
  bayes-rlhf evaluate --policy ./trl-output --model ./base-model --prompt "Once upon" \\
      --reward mypkg.rewards:score --beta 0.5 --max-new-tokens 3 --top-k 20
Without --model the prior is the embedded default model (with its demo prompts unless --prompt).
--reward mypkg.rewards:score uses score(prompts, completions) as the reward; a function that
builds the reward from the prior is named factory:mypkg.rewards:make_reward (make_reward(lm))."""

FIELDS = ("kl_q_posterior", "kl_posterior_q", "total_variation", "objective", "optimal_objective",
          "mean_reward", "kl_q_prior", "q_outside", "plain_q_outside")
SUPPORTS = ("target", "own", "none")


def register(subparsers) -> argparse.ArgumentParser:
    from bayes_rlhf.commands._common import HelpFormatter, add_model_args, add_out_args, add_target_args

    p = subparsers.add_parser("evaluate", help="compare a policy checkpoint with the exact posterior",
                              description="Compare a transformers checkpoint with the exact posterior of a prior "
                                          "and reward (KL both ways, TV, RL objective), in nats.",
                              epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--policy", required=True, metavar="DIR",
                   help="checkpoint directory of the policy (model + tokenizer), e.g. demo_out/policy")
    p.add_argument("--policy-support", choices=SUPPORTS, default="target",
                   help="with --top-k: read the policy restricted to the target's support and renormalised "
                        "(target, the default), as its support.json says (own), or plain (none)")
    p.add_argument("--tsv", action="store_true",
                   help="print the table tab-separated with 6 significant digits (for scripts) instead of aligned")
    add_model_args(p)
    add_target_args(p)
    add_out_args(p, None, "write a run directory and report.html here")
    p.set_defaults(func=run)
    return p


def evaluate(args):
    """Load, check and compare; returns (posteriors, {label: [log q per posterior]}, comparisons)."""
    from bayes_rlhf.commands._common import load_target, prompts_of
    from bayes_rlhf.diagnostics.exact import compare, policy_log_probs
    from bayes_rlhf.errors import TokenizerMismatchError
    from bayes_rlhf.exact import exact_posterior
    from bayes_rlhf.models import load_model
    from bayes_rlhf.rewards.spec import check_spec

    prompts = prompts_of(args)
    check_spec(args.reward)
    check_policy_path(args.policy)  # both before the prior loads
    target = load_target(args)
    prior = target.prior
    for p in prompts:
        target.check_prompt(p)
    plain = load_model(args.policy, support=None)
    if not plain.same_tokenizer(prior):
        raise TokenizerMismatchError(f"the policy at {args.policy} has another tokenizer than the prior "
                                     f"(vocab {plain.vocab_size} vs {prior.vocab_size}, EOS {plain.eos_token_id} vs "
                                     f"{prior.eos_token_id}); evaluate it against the model it was fine-tuned from")
    policy = _read_policy(args, plain, prior)
    posteriors, tables, comparisons = [], [], []
    for prompt in prompts:
        post = exact_posterior(target, prompt)
        lq = policy_log_probs(policy, post)
        plain_outside = lq if policy is plain else policy_log_probs(plain, post)
        posteriors.append(post)
        tables.append(lq)
        comparisons.append(compare(lq, post).as_dict() | {"plain_q_outside": compare(plain_outside, post).q_outside})
    return posteriors, {"policy": tables}, comparisons


def check_policy_path(policy: str) -> None:
    """ModelLoadError, before anything loads, for a --policy that cannot be a checkpoint: no such path
    (unless it has a hub id's owner/name form), or a folder without config.json, naming its policy/
    checkpoint when it is the folder of a demo or train run."""
    from pathlib import Path

    from bayes_rlhf.errors import ModelLoadError
    from bayes_rlhf.models.loading import looks_like_hub_id

    path = Path(policy)
    if not path.exists():
        local = path.parent.is_dir() and str(path.parent) not in (".", "")  # runs/nope: runs/ is here
        if "/" in policy and looks_like_hub_id(policy) and not local:
            return  # a hub id (the loader says if it is not cached)
        why = f" ({str(path.parent)!r} is a folder here, so --policy is read as a path, not a hub id)" if local else ""
        raise ModelLoadError(f"--policy {policy!r} does not exist; give the folder of a saved checkpoint "
                             "(config.json, model.safetensors, tokenizer files), e.g. demo_out/policy or "
                             f"runs/NAME/policy{why}")
    if path.is_file():
        raise ModelLoadError(f"--policy {policy!r} is a file; give the checkpoint's folder (config.json, "
                             "model.safetensors, tokenizer files)")
    if not any((path / f).is_file() for f in ("config.json", "adapter_config.json")):
        hint = (f"it is a run folder: use --policy {path / 'policy'}" if (path / "policy" / "config.json").is_file()
                else "give the folder save_pretrained wrote")
        raise ModelLoadError(f"--policy {policy!r} has no config.json, so it is not a transformers checkpoint; {hint}")


def _read_policy(args, plain, prior):
    """The checkpoint read as ``--policy-support`` says (see the module docstring)."""
    from bayes_rlhf.models import load_model

    support = getattr(args, "policy_support", "target")
    if support == "none" or (support == "target" and prior.top_k is None):
        return plain
    if support == "target":
        return plain.with_support(prior)
    return load_model(args.policy)


def _reading(args) -> str:
    if args.top_k is None:
        return "q = the checkpoint as saved (the target is untruncated); nats"
    how = {"target": f"restricted to the target's support (the prior's top-{args.top_k} at every prefix) and "
                     "renormalised",
           "own": "as its support.json records it (plain if it has none)",
           "none": "plain, as transformers reads it"}[getattr(args, "policy_support", "target")]
    return (f"q = the checkpoint {how}; plain_q_outside = the plain checkpoint's mass outside the "
            "target's support; nats")


def format_comparisons(posteriors, comparisons, tsv: bool = False) -> str:
    """One row per prompt, one column per ``FIELDS``: aligned for people (prompts labelled as ``exact``
    prints them), or with ``tsv`` tab-separated with the prompt's repr and 6 significant digits."""
    from bayes_rlhf.commands._common import aligned_table, format_number, show_prompt

    if tsv:
        return "\n".join(["prompt\t" + "\t".join(FIELDS)]
                         + [repr(post.prompt) + "\t" + "\t".join(f"{d[f]:.6g}" for f in FIELDS)
                            for post, d in zip(posteriors, comparisons)])
    rows = [[show_prompt(post.prompt)] + [format_number(d[f]) for f in FIELDS] for post, d in zip(posteriors, comparisons)]
    return aligned_table(["prompt", *FIELDS], rows)


def run(args) -> int:
    """``_run`` on ``--threads`` torch threads (default: one for the embedded model)."""
    from bayes_rlhf.commands._common import command_threads

    with command_threads(getattr(args, "threads", None), args.model):
        return _run(args)


def _run(args) -> int:
    """Print one row of exact comparisons per prompt; bad input raises typed errors (the CLI prints them)."""
    from bayes_rlhf.commands._common import claim, target_settings

    folder = claim(args, "evaluate", target_settings(args) | {"policy": str(args.policy)})
    posteriors, policies, comparisons = evaluate(args)
    print(_reading(args))
    print(format_comparisons(posteriors, comparisons, tsv=getattr(args, "tsv", False)))
    if folder is not None:
        from bayes_rlhf.diagnostics.run_dir import save_run
        from bayes_rlhf.report import write_report

        with folder.writing() as d:
            save_run(d, posteriors, policies=policies,
                     extra={"command": "evaluate", "policy": str(args.policy), "model": args.model})
        print(write_report(args.out))
    return 0
