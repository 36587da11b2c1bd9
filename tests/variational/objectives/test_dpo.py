"""DPO, IPO and online DPO as objectives: their losses on a batch against the exact population loss and by
hand, and training runs against the exact fixed point of each objective on the tiny enumerable target
(``variational/preferences.py`` derives those fixed points; tests/variational/test_preferences.py checks them)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import bayes_rlhf as br
from bayes_rlhf.diagnostics.exact import policy_log_probs
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.models.toy import tiny_lm
from bayes_rlhf.variational import TrainerConfig, train_policy
from bayes_rlhf.variational.objectives import PolicyBatch, get_objective
from bayes_rlhf.variational.objectives.dpo import within_group_pairs
from bayes_rlhf.variational.preferences import (Preferences, exact_preference_loss, ipo_fixed_point,
                                                online_dpo_fixed_point, sample_preferences)
from bayes_rlhf.variational.sources import Source, make_draw
from tests.variational.conftest import kl


# ----------------------------------------------------------------------------- the losses on a batch
def pair_batch(target, prefs: Preferences, q) -> PolicyBatch:
    """The preference source's rows for one prompt, scored by q and pi0, as the loss sees them."""
    draw = make_draw(Source("preferences"), target, q, 2 * len(prefs), preferences=prefs)
    d = draw(["w0"], torch.Generator().manual_seed(0))
    logq = q.score("w0", d.ids, d.mask).double()
    lp = target.prior.score("w0", d.ids, d.mask).double()
    return PolicyBatch(logq=logq, old_logq=logq, prior_logp=lp, mask=d.mask, rewards=torch.zeros(len(d.ids)),
                       group=d.group, beta=target.beta)


@pytest.mark.parametrize("name", ["dpo", "ipo"])
def test_the_batch_loss_is_an_unbiased_estimate_of_the_population_loss(small_target, post, name):
    """Pairs of sample_preferences, a policy q != pi0: the record's loss is the mean per-pair loss, and that
    mean is within 4 standard errors of the exact population loss of q."""
    q = tiny_lm("gpt2", vocab_size=6, seed=11, hidden=16)
    prefs = sample_preferences(small_target, "w0", 3000, generator=torch.Generator().manual_seed(2))
    batch = pair_batch(small_target, prefs, q)
    u = batch.logq.sum(-1) - batch.prior_logp.sum(-1)
    delta = u[0::2] - u[1::2]
    beta = small_target.beta
    per_pair = -F.logsigmoid(beta * delta) if name == "dpo" else (delta - 0.5 / beta) ** 2
    out = get_objective(name).loss(batch, None)
    assert float(out.loss) == pytest.approx(float(per_pair.mean()), rel=1e-12)
    exact = float(exact_preference_loss(policy_log_probs(q, post), post, loss=name))
    se = float(per_pair.std()) / math.sqrt(len(per_pair))
    assert abs(float(per_pair.mean()) - exact) < 4 * se


def test_online_pairs_and_loss_by_hand():
    i, j = within_group_pairs(torch.tensor([0, 0, 1, 1, 1]))
    assert list(zip(i.tolist(), j.tolist())) == [(0, 1), (2, 3), (2, 4), (3, 4)]
    logq = torch.tensor([[-1.0], [-2.0], [-0.5]], dtype=torch.float64)
    lp = torch.tensor([[-1.5], [-1.0], [-0.5]], dtype=torch.float64)
    r = torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64)
    batch = PolicyBatch(logq=logq, old_logq=logq, prior_logp=lp, mask=torch.ones(3, 1, dtype=torch.bool),
                        rewards=r, group=torch.tensor([0, 0, 0]), beta=0.5)
    u = (logq - lp).squeeze(-1)
    pairs = [(0, 1), (0, 2), (1, 2)]
    for judge in ("better", "bradley_terry"):
        cfg = TrainerConfig(objective="online_dpo", dpo_judge=judge)
        want = 0.0
        for a, b in pairs:
            p = (1.0 if r[a] > r[b] else 0.5) if judge == "better" else 1 / (1 + math.exp(-(r[a] - r[b])))
            h = 0.5 * float(u[a] - u[b])
            want -= p * math.log(1 / (1 + math.exp(-h))) + (1 - p) * math.log(1 / (1 + math.exp(h)))
        assert float(get_objective("online_dpo")(batch, cfg).loss) == pytest.approx(want / 3, rel=1e-12)


# ----------------------------------------------------------------------------- training reaches the fixed points
def test_dpo_from_many_pairs_reaches_the_posterior(small_target, post, fast_config):
    """4000 pairs: the empirical optimum is near pi* (tabular MLE error ~ (K - 1) / (2 n) = 0.02 nats here),
    plus SGD noise; measured 0.03-0.07 at 2000 pairs and two prompts. KL(pi0 || pi*) is 3.06."""
    prefs = sample_preferences(small_target, "w0", 4000, generator=torch.Generator().manual_seed(5))
    cfg = fast_config(objective="dpo", steps=200, samples_per_prompt=32)
    q, history = train_policy(small_target, "w0", cfg, preferences=prefs)
    assert history.last["pair_accuracy"] is not None
    assert kl(policy_log_probs(q, post), post.log_probs) < 0.1


def test_ipo_reaches_its_fixed_point_not_the_posterior(small_target, post, fast_config):
    prefs = sample_preferences(small_target, "w0", 4000, generator=torch.Generator().manual_seed(6))
    q, _ = train_policy(small_target, "w0", fast_config(objective="ipo", steps=200, samples_per_prompt=32),
                        preferences=prefs)
    lq, fp = policy_log_probs(q, post), ipo_fixed_point(post)
    assert kl(lq, fp) < 0.03  # measured 0.004 after 300 steps
    assert kl(lq, post.log_probs) > 1.0  # KL(ipo fixed point || pi*) = 1.81


def test_online_dpo_with_the_bradley_terry_judge_reaches_the_posterior(small_target, post, fast_config):
    q, history = train_policy(small_target, "w0", fast_config(objective="online_dpo", steps=150,
                                                              samples_per_prompt=16))
    assert kl(policy_log_probs(q, post), post.log_probs) < 0.05  # measured 0.012 at 150 steps, 0.010 at 300
    assert history.last["margin"] > 0


def test_online_dpo_with_the_better_judge_heads_for_the_best_completions(small_target, post, fast_config):
    """Not pi*: KL(fixed point || q) falls from 0.90 at pi* (6.37 at pi0) to 0.12 in 100 steps (measured)."""
    q, _ = train_policy(small_target, "w0", fast_config(objective="online_dpo", dpo_judge="better", steps=100,
                                                        samples_per_prompt=16))
    lq, fp = policy_log_probs(q, post), online_dpo_fixed_point(post, "better")
    assert kl(fp, lq) < 0.5 * kl(fp, post.log_probs)
    assert kl(lq, post.log_probs) > 0.2


def test_train_policy_refuses_mismatched_preferences_before_work(small_target, fast_config, tmp_path):
    prefs = sample_preferences(small_target, ["w0", "w1 w2"], 3, generator=torch.Generator().manual_seed(0))
    cases = [(fast_config(objective="dpo", checkpoint_dir=str(tmp_path / "a")), "w0", None, "preference pairs"),
             (fast_config(objective="rloo", checkpoint_dir=str(tmp_path / "b")), ["w0", "w1 w2"], prefs, "only"),
             (fast_config(objective="ipo", checkpoint_dir=str(tmp_path / "c")), "w0", prefs, "not training"),
             (fast_config(objective="dpo", checkpoint_dir=str(tmp_path / "d")), ["w0", "w1 w2", "w2"],
              prefs, "no preference pairs")]
    for cfg, prompts, p, match in cases:
        with pytest.raises(ConfigError, match=match):
            train_policy(small_target, prompts, cfg, preferences=p)
        assert not (tmp_path / cfg.checkpoint_dir).exists()
    with pytest.raises(ConfigError, match="dpo_judge"):
        TrainerConfig(objective="online_dpo", dpo_judge="coin")


def test_a_resumed_run_needs_the_same_preferences(small_target, fast_config, tmp_path):
    """The pairs are part of the checkpoint fingerprint: the same ones resume, other pairs are refused."""
    gen = torch.Generator().manual_seed(0)
    a, b = (sample_preferences(small_target, "w0", 20, generator=gen) for _ in range(2))
    cfg = fast_config(objective="dpo", steps=2, checkpoint_dir=str(tmp_path / "run"))
    train_policy(small_target, "w0", cfg, preferences=a)
    more = fast_config(objective="dpo", steps=3, checkpoint_dir=str(tmp_path / "run"))
    _, same = train_policy(small_target, "w0", more, preferences=a)
    assert [r["step"] for r in same.rows] == [1, 2, 3]
    with pytest.raises(ConfigError, match="target.preferences"):
        train_policy(small_target, "w0", more, preferences=b)


@pytest.mark.slow
def test_online_dpo_on_the_default_model(tmp_path):
    """The default model ("the movie was", beta 1, T = 3): the Bradley-Terry judge reaches pi*; the "better"
    judge pushes the reward past pi*'s (its fixed point, pi0 on the reward-3 completions, has prior mass
    5e-10 here: q heads for the best completions its samples find, away from pi*)."""
    lm, reward = br.default_model()
    target = br.Target(lm, reward, 1.0, 3)
    post = br.exact_posterior(target, "the movie was")
    cfg = dict(steps=300, samples_per_prompt=16, progress=False, eval_every=1000)
    q, _ = train_policy(target, "the movie was", TrainerConfig(objective="online_dpo", **cfg))
    assert kl(policy_log_probs(q, post), post.log_probs) < 0.05
    q, _ = train_policy(target, "the movie was", TrainerConfig(objective="online_dpo", dpo_judge="better", **cfg))
    c = br.compare(q, post)
    assert c.mean_reward > post.mean_reward + 0.2 and c.kl_q_posterior > 0.1
