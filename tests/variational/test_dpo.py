"""DPO, IPO and online DPO against their exact fixed points (``variational/preferences.py`` derives them).

The population results are checked on a table of every completion (156 of them, q a free softmax), the
sampled pieces against those exact answers within their standard errors, and training runs against
the exact fixed point of each objective on the tiny enumerable target."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import bayes_rlhf as br
from bayes_rlhf.diagnostics.exact import policy_log_probs
from bayes_rlhf.errors import ConfigError, PromptError
from bayes_rlhf.models.toy import tiny_lm
from bayes_rlhf.variational import TrainerConfig, train_policy
from bayes_rlhf.variational.objectives import PolicyBatch, get_objective
from bayes_rlhf.variational.objectives.dpo import within_group_pairs
from bayes_rlhf.variational.preferences import (Preferences, as_preferences, dpo_fixed_point, exact_preference_loss,
                                                ipo_fixed_point, label_probabilities, online_dpo_fixed_point,
                                                sample_preferences, win_rates)
from bayes_rlhf.variational.sources import Source, make_draw


def kl(lq: torch.Tensor, lp: torch.Tensor) -> float:
    """KL(q || p) of two tables of log-probs (q's zeros add nothing)."""
    q = lq.exp()
    pos = q > 0
    return float((q[pos] * (lq[pos] - lp[pos])).sum())


def table(post, theta: torch.Tensor) -> torch.Tensor:
    """A free policy over the table: log q = log softmax(log pi0 + theta)."""
    return torch.log_softmax(post.prior_log_probs + theta, 0)


def minimise(post, loss_of, iters: int = 200) -> torch.Tensor:
    """The table minimising ``loss_of(log_q)`` by L-BFGS from pi0."""
    theta = torch.zeros_like(post.prior_log_probs, requires_grad=True)
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=iters, tolerance_grad=1e-14, tolerance_change=1e-16,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_of(table(post, theta))
        loss.backward()
        return loss
    opt.step(closure)
    return table(post, theta.detach())


def grad_at(post, log_q: torch.Tensor, **kw) -> torch.Tensor:
    """Gradient of the exact population loss with respect to the table's free logits at ``log_q``."""
    theta = (log_q - post.prior_log_probs).clone().requires_grad_(True)
    exact_preference_loss(table(post, theta), post, **kw).backward()
    return theta.grad


@pytest.fixture(scope="module")
def post(small_target):
    return br.exact_posterior(small_target, "w0")


# ----------------------------------------------------------------------------- labels and pairs
def test_label_probabilities_by_hand():
    a, b = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64), torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64)
    bt = label_probabilities(a, b, "bradley_terry", temperature=2.0)
    assert torch.allclose(bt, torch.tensor([1 / (1 + math.exp(-0.5)), 0.5, 1 / (1 + math.exp(0.5))],
                                           dtype=torch.float64))
    assert label_probabilities(a, b, "better").tolist() == [1.0, 0.5, 0.0]
    with pytest.raises(ConfigError, match="judge"):
        label_probabilities(a, b, "coin")


def test_win_rates_against_a_direct_double_sum(post):
    r, p0 = post.rewards, post.prior_log_probs.exp()
    for judge, t in (("bradley_terry", 1.0), ("bradley_terry", 0.3), ("better", 1.0)):
        direct = (label_probabilities(r[:, None], r[None, :], judge, t) * p0[None, :]).sum(1)
        assert torch.allclose(win_rates(post, judge, t, block=7), direct, atol=1e-14)


def test_sampled_pairs_follow_the_bradley_terry_law(small_target, post):
    """A pair (a, b) of pi0 draws, a chosen w.p. sigmoid(r_a - r_b): chosen ~ 2 pi0 w and rejected ~ 2 pi0 (1 - w),
    w the win rate against pi0. Mean rewards of each side within 4 standard errors of the exact ones."""
    n = 4000
    prefs = sample_preferences(small_target, "w0", n, generator=torch.Generator().manual_seed(1))
    assert len(prefs) == n and prefs.prompts == ("w0",) * n and prefs.max_new_tokens == 3
    w, p0 = win_rates(post), post.prior_log_probs.exp()
    for ids, mask, law in ((prefs.chosen_ids, prefs.chosen_mask, 2 * p0 * w),
                           (prefs.rejected_ids, prefs.rejected_mask, 2 * p0 * (1 - w))):
        assert abs(float(law.sum()) - 1) < 1e-12
        r = small_target.rewards("w0", ids, mask)
        exact = float((law * post.rewards).sum())
        assert abs(float(r.mean()) - exact) < 4 * float(r.std()) / math.sqrt(n)
    again = sample_preferences(small_target, "w0", n, generator=torch.Generator().manual_seed(1))
    assert again.fingerprint() == prefs.fingerprint()


def test_sample_preferences_checks_its_arguments(small_target):
    with pytest.raises(ConfigError, match="generator"):
        sample_preferences(small_target, "w0", 4, generator=None)
    with pytest.raises(ConfigError, match="num_pairs"):
        sample_preferences(small_target, "w0", 0, generator=torch.Generator())
    with pytest.raises(ConfigError, match="temperature"):
        sample_preferences(small_target, "w0", 4, generator=torch.Generator(), temperature=0)


# ----------------------------------------------------------------------------- exact population optima
def test_dpo_population_loss_is_stationary_at_the_posterior_and_minimised_there(post):
    g = grad_at(post, post.log_probs)
    assert float(g.abs().max()) < 1e-13
    assert float(grad_at(post, post.prior_log_probs).abs().max()) > 1e-3  # the test can fail: pi0 is not a stationary point
    best = minimise(post, lambda lq: exact_preference_loss(lq, post))
    assert kl(best, post.log_probs) < 1e-9


def test_dpo_at_another_label_temperature_reaches_the_posterior_at_beta_times_it(small_target, post):
    """Labels sigmoid((r_a - r_b) / t): the optimum is pi* at beta * t, checked against its own enumeration."""
    other = br.exact_posterior(br.Target(small_target.prior, small_target.reward, post.beta * 2.0, 3), "w0")
    assert torch.allclose(dpo_fixed_point(post, temperature=2.0), other.log_probs, atol=1e-12)
    best = minimise(post, lambda lq: exact_preference_loss(lq, post, temperature=2.0))
    assert kl(best, other.log_probs) < 1e-9
    assert kl(best, post.log_probs) > 0.1


def test_ipo_population_optimum_is_the_win_rate_tilt_not_the_posterior(post):
    fp = ipo_fixed_point(post)
    assert float(grad_at(post, fp, loss="ipo").abs().max()) < 1e-13
    best = minimise(post, lambda lq: exact_preference_loss(lq, post, loss="ipo"))
    assert kl(best, fp) < 1e-9
    assert kl(fp, post.log_probs) > 1.0  # IPO's fixed point is far from pi* here (w in [0, 1] against r / beta)
    fp2 = ipo_fixed_point(post, tau=0.1)
    assert kl(minimise(post, lambda lq: exact_preference_loss(lq, post, loss="ipo", tau=0.1)), fp2) < 1e-9


def semi_gradient_descent(post, judge: str, steps: int, lr: float = 1.0) -> torch.Tensor:
    """Online DPO on the table: pairs from the current q (no gradient through the sampling law); each
    logit's step divided by its q (the gradient carries a factor q(a)), which keeps the stationary points."""
    theta = torch.zeros_like(post.prior_log_probs, requires_grad=True)
    for _ in range(steps):
        lq = table(post, theta)
        loss = exact_preference_loss(lq, post, judge=judge, pair_log_probs=lq.detach())
        (g,) = torch.autograd.grad(loss, theta)
        with torch.no_grad():
            theta -= lr * g / lq.exp()
    return table(post, theta.detach())


def test_online_dpo_fixed_points_on_the_table(post):
    """Bradley-Terry judge: pi* is stationary and the dynamics reach it. "better" judge: pi* is not
    stationary, and q heads for pi0 on the highest-reward completions."""
    lp = post.log_probs
    theta = (lp - post.prior_log_probs).clone().requires_grad_(True)
    exact_preference_loss(table(post, theta), post, pair_log_probs=lp).backward()
    assert float(theta.grad.abs().max()) < 1e-13
    reached = semi_gradient_descent(post, "bradley_terry", 400)
    assert kl(reached, lp) < 1e-8  # geometric convergence: 1e-10 after 400 steps

    theta = (lp - post.prior_log_probs).clone().requires_grad_(True)
    exact_preference_loss(table(post, theta), post, judge="better", pair_log_probs=lp).backward()
    assert float(theta.grad.abs().max()) > 1e-3
    fp = online_dpo_fixed_point(post, "better")
    best = torch.isfinite(fp)
    masses = [float(semi_gradient_descent(post, "better", s).exp()[best].sum()) for s in (50, 200)]
    assert float(lp.exp()[best].sum()) < masses[0] < masses[1]
    assert masses[1] > 0.9


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


def test_the_preference_source_draws_pairs_in_turn(small_target):
    prefs = sample_preferences(small_target, ["w0", "w1 w2"], 5, generator=torch.Generator().manual_seed(3))
    draw = make_draw(Source("preferences"), small_target, small_target.prior, 6, preferences=prefs)
    d = draw(["w1 w2", "w0"], torch.Generator().manual_seed(4))
    assert d.group.tolist() == [0] * 6 + [1] * 6 and d.log_weights is None
    pairs = {(tuple(c.tolist()), tuple(r.tolist())) for c, r in zip(prefs.chosen_ids, prefs.rejected_ids)}
    for i in range(0, 12, 2):  # every drawn (chosen, rejected) is one of the prompt's pairs
        assert (tuple(d.ids[i].tolist()), tuple(d.ids[i + 1].tolist())) in pairs
    first = prefs.rows_of("w1 w2")
    own = {(tuple(prefs.chosen_ids[j].tolist()), tuple(prefs.rejected_ids[j].tolist())) for j in first.tolist()}
    assert (tuple(d.ids[0].tolist()), tuple(d.ids[1].tolist())) in own
    again = draw(["w1 w2", "w0"], torch.Generator().manual_seed(4))
    assert torch.equal(again.ids, d.ids)


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


# ----------------------------------------------------------------------------- inputs, checked before work
def test_text_triples_and_datasets_become_pairs(small_target):
    lm = small_target.prior
    triples = [("w0", "w1 w2", "w0"), ("w0", "w0 w0 w0", "w2 </s>")]
    prefs = as_preferences(triples, lm, 3)
    eos, pad = lm.eos_token_id, lm.pad_id
    assert prefs.chosen_ids.tolist() == [[4, 5, eos], [3, 3, 3]]
    assert prefs.chosen_mask.tolist() == [[True] * 3] * 2
    assert prefs.rejected_ids.tolist() == [[3, eos, pad], [5, eos, pad]]
    assert [t[1:] for t in prefs.triples(lm)] == [("w1 w2", "w0"), ("w0 w0 w0", "w2")]

    class Table:  # what train_policy reads of a datasets.Dataset
        column_names = ["prompt", "chosen", "rejected", "score"]

        def __getitem__(self, key):
            return [t[["prompt", "chosen", "rejected"].index(key)] for t in triples]
    assert as_preferences(Table(), lm, 3).fingerprint() == prefs.fingerprint()
    with pytest.raises(PromptError, match="max_new_tokens"):
        as_preferences([("w0", "w0 w0 w0 w0", "w0")], lm, 3)
    with pytest.raises(ConfigError, match="triple"):
        as_preferences([("w0", "w1")], lm, 3)
    with pytest.raises(ConfigError, match="empty"):
        as_preferences([], lm, 3)
    Table.column_names = ["prompt", "chosen"]
    with pytest.raises(ConfigError, match="rejected"):
        as_preferences(Table(), lm, 3)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        as_preferences(prefs, lm, 4)


def test_a_real_datasets_dataset(small_target):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"prompt": ["w0"], "chosen": ["w1"], "rejected": ["w2"]})
    assert as_preferences(ds, small_target.prior, 3).chosen_ids.tolist() == [[4, small_target.prior.eos_token_id,
                                                                            small_target.prior.pad_id]]


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
