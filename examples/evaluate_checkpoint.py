"""User story: "I fine-tuned a model elsewhere (TRL, my own loop); how far is it from pi*?"

Any transformers checkpoint directory that shares the prior's tokenizer can be compared with the
exact posterior. Here we make such a checkpoint with plain PyTorch (a few steps of supervised
fine-tuning on positive reviews, no bayes_rlhf trainer), save it with transformers, load it
back, and evaluate it: exact KL both ways, TV, the RL objective, and the same as a report.

    python examples/evaluate_checkpoint.py [--out runs/evaluate_example]
"""

import argparse
import tempfile
from pathlib import Path

import torch
import bayes_rlhf as br


def finetune_elsewhere(lm: br.CausalLM, directory: Path) -> Path:
    """Stand-in for an external trainer: plain SFT on positive completions, saved by transformers."""
    model = lm.model
    texts = ["the movie was great .", "the movie was very good .", "the movie was fun and lovely ."]
    batch = lm.tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(5):
        loss = model(**batch, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(directory)
    lm.tokenizer.save_pretrained(directory)
    return directory


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write a run directory with report.html here")
    args = parser.parse_args(argv)

    prior, reward = br.default_model(device="cpu")
    target = br.Target(prior=prior, reward=reward, beta=1.0, max_new_tokens=4)
    post = br.exact_posterior(target, "the movie was")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = finetune_elsewhere(br.default_model(device="cpu")[0], Path(tmp) / "sft")
        policy = br.load_model(ckpt, device="cpu")   # any checkpoint directory works here
        c = br.compare(policy, post)
    print(f"KL(q || pi*) = {c.kl_q_posterior:.4f}  KL(pi* || q) = {c.kl_posterior_q:.4f}  "
          f"TV = {c.total_variation:.4f}")
    print(f"objective {c.objective:.4f} vs optimum {c.optimal_objective:.4f}; E_q[r] = {c.mean_reward:.3f}, "
          f"KL(q || pi0) = {c.kl_q_prior:.3f}")
    if args.out:
        br.save_run(args.out, [post], policies={"sft": policy})
        print("report:", br.write_report(args.out))
    return c


if __name__ == "__main__":
    main()
