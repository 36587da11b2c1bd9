"""Training against a top-k-truncated target: the policy lives on the prior's support S(prefix).

The failure this guards against: a policy that truncated by its own logits drifted off the
prior's top-k set after one step, its samples had log pi0 = -inf and training diverged.
"""

import copy

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.models.toy import tiny_lm
from tests.conftest import first_word_reward

PROMPT = "w1 w2"


@pytest.fixture(scope="module")
def truncated(tmp_path_factory):
    """A tiny Llama saved to disk and loaded back with top_k=3 (so it has a source to record)."""
    d = tmp_path_factory.mktemp("prior") / "prior"
    tiny_lm("llama", vocab_size=10, seed=3).save_pretrained(d)
    prior = br.load_model(d, top_k=3)
    target = br.Target(prior, first_word_reward(), 0.5, 3)
    return d, prior, target, br.exact_posterior(target, PROMPT)


def test_restricted_distribution_is_renormalised_on_the_prior_top_k(truncated):
    _, prior, _, _ = truncated
    other = tiny_lm("llama", vocab_size=10, seed=9)  # different weights, same tokenizer
    other.tokenizer = prior.tokenizer
    q = other.with_support(prior)
    state, lq = q.start(PROMPT, 2)
    _, lp = prior.start(PROMPT, 2)
    _, lo = other.start(PROMPT, 2)
    inside = torch.isfinite(lp)
    assert torch.equal(torch.isfinite(lq), inside) and int(inside[0].sum()) == 3
    expect = torch.log_softmax(lo.masked_fill(~inside, float("-inf")), -1)
    assert torch.allclose(lq[inside], expect[inside], atol=1e-12)
    # the step primitive and whole-sequence scoring agree, and the support state follows reindexing
    tok = lq.argmax(-1)
    state2, lq2 = q.step(state.reindex(torch.tensor([1, 0])), tok)
    ids = torch.stack([tok, lq2.argmax(-1)], 1)
    seq = q.token_log_probs(PROMPT, ids, torch.ones_like(ids, dtype=torch.bool))
    assert torch.allclose(seq[:, 1], lq2.gather(-1, ids[:, 1:]).squeeze(-1), atol=1e-10)
    assert torch.isfinite(prior.score(PROMPT, ids, torch.ones_like(ids, dtype=torch.bool))).all()


def test_training_against_truncated_target_converges(truncated):
    _, prior, target, post = truncated
    config = br.TrainerConfig(steps=60, lr=3e-2, lora_rank=4, seed=0)
    policy, history = br.train_policy(target, [PROMPT], config, evaluator=post)
    start = br.compare(prior, post).kl_q_posterior
    end = br.compare(policy, post)
    assert end.q_outside == 0.0
    assert end.kl_q_posterior < 0.5 * start, (start, end.kl_q_posterior)
    samples = policy.sample(PROMPT, 200, 3, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(prior.score(PROMPT, samples.ids, samples.mask).sum(-1)).all()


def test_saved_policy_records_its_support_and_loads_back(truncated, tmp_path):
    prior_dir, prior, target, post = truncated
    policy, _ = br.train_policy(target, [PROMPT], br.TrainerConfig(steps=3, lr=1e-2, seed=0))
    lq = br.compare(policy, post)
    d = policy.save_pretrained(tmp_path / "policy")
    record = __import__("json").loads((d / "support.json").read_text())
    assert record["top_k"] == 3 and record["prior"] == str(prior_dir.resolve())
    again = br.load_model(d)
    assert again.support is not None and again.support.top_k == 3
    assert br.compare(again, post).kl_q_posterior == pytest.approx(lq.kl_q_posterior, abs=1e-9)
    plain = br.load_model(d, support=None)  # the checkpoint as plain transformers reads it
    assert plain.support is None and br.compare(plain, post).q_outside > 0
    explicit = br.load_model(d, support=prior)
    assert br.compare(explicit, post).kl_q_posterior == pytest.approx(lq.kl_q_posterior, abs=1e-9)


def test_unnamed_prior_is_a_typed_error_on_load(tmp_path, truncated):
    _, _, _, post = truncated
    prior = tiny_lm("llama", vocab_size=10, seed=3, top_k=3)  # built in memory: no source to record
    policy = copy.copy(prior).with_top_k(None).with_support(prior)
    d = policy.save_pretrained(tmp_path / "p")
    with pytest.raises(br.ModelLoadError, match="support=prior_lm"):
        br.load_model(d)
    assert br.load_model(d, support=prior).support is prior
    (d / "support.json").write_text('{"top_k": "four"}')
    with pytest.raises(br.ModelLoadError, match="not a valid support record"):
        br.load_model(d)


def test_support_must_be_truncated_and_share_the_tokenizer(truncated):
    _, prior, _, _ = truncated
    lm = tiny_lm("llama", vocab_size=10, seed=4)
    with pytest.raises(br.ConfigError, match="top_k"):
        lm.with_support(lm)
    with pytest.raises(br.TokenizerMismatchError):
        tiny_lm("llama", vocab_size=12, seed=4).with_support(prior)


def _evaluate(capsys, *args):
    from bayes_rlhf.cli import main

    assert main(["evaluate", *args, "--tsv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    header, row = lines[-2].split("\t"), lines[-1].split("\t")
    return lines[0], dict(zip(header[1:], map(float, row[1:])))


def test_evaluate_reads_a_checkpoint_on_the_target_support(truncated, tmp_path, capsys):
    prior_dir, prior, target, post = truncated
    policy, _ = br.train_policy(target, [PROMPT], br.TrainerConfig(steps=5, lr=1e-2, seed=0))
    ckpt = policy.save_pretrained(tmp_path / "policy")
    common = ["--policy", str(ckpt), "--model", str(prior_dir), "--top-k", "3", "--prompt", PROMPT,
              "--reward", "length", "--beta", "0.5", "--max-new-tokens", "3"]
    reading, on_support = _evaluate(capsys, *common)
    assert "restricted to the target's support" in reading
    assert on_support["q_outside"] == 0 and 0 <= on_support["kl_q_posterior"] < float("inf")
    assert on_support["kl_q_prior"] >= 0 and on_support["plain_q_outside"] > 0.01
    _, own = _evaluate(capsys, *common, "--policy-support", "own")  # support.json names the same prior
    assert own["kl_q_posterior"] == pytest.approx(on_support["kl_q_posterior"], abs=1e-9)
    reading, plain = _evaluate(capsys, *common, "--policy-support", "none")
    assert "plain" in reading and plain["kl_q_posterior"] == float("inf")
    assert plain["q_outside"] == pytest.approx(on_support["plain_q_outside"])
    assert plain["kl_q_prior"] == float("inf") and plain["mean_reward"] != plain["mean_reward"]  # NaN, no partial sum


def test_float32_tables_do_not_read_rounding_as_mass_outside():
    # a float32 model's table of log q sums to 1 only to ~1e-7: passed to compare as a float64
    # tensor (as the trainer's evaluator and `evaluate` do) that must not read as mass outside
    from bayes_rlhf.diagnostics.exact import policy_log_probs

    prior = tiny_lm("llama", vocab_size=12, seed=8, dtype=torch.float32, top_k=3)
    post = br.exact_posterior(br.Target(prior, first_word_reward(), 0.5, 4), PROMPT)
    q = prior.with_top_k(None).with_support(prior)
    lq = policy_log_probs(q, post)
    assert lq.dtype == torch.float64 and 1e-8 < 1 - float(lq.exp().sum()) < 1e-5  # rounding, not mass
    c = br.compare(lq, post)
    assert c.q_outside == 0 and c.kl_q_posterior == pytest.approx(br.compare(prior, post).kl_q_posterior, abs=1e-5)
    assert br.compare(prior.with_top_k(None), post).q_outside > 0.01  # real mass outside still shows
