"""Preference pairs and the exact fixed points of DPO, IPO and online DPO (``variational/preferences.py``).

The population results are checked on a table of every completion (156 of them, q a free softmax) and
the sampled pairs against those exact answers within their standard errors (the losses on a batch and
training towards these fixed points are in objectives/test_dpo.py)."""

from __future__ import annotations

import math

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.errors import ConfigError, PromptError
from bayes_rlhf.variational.preferences import (as_preferences, dpo_fixed_point, exact_preference_loss,
                                                ipo_fixed_point, label_probabilities, online_dpo_fixed_point,
                                                sample_preferences, win_rates)
from tests.variational.conftest import kl


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


def test_preferences_of_another_vocabulary_are_refused(small_target):
    # tokenised for a vocab-16 model, they once crashed mid-run with an IndexError
    from bayes_rlhf.errors import TokenizerMismatchError
    from bayes_rlhf.models.toy import tiny_lm

    big = br.Target(tiny_lm("gpt2", vocab_size=16, seed=0), small_target.reward, small_target.beta,
                    small_target.max_new_tokens)
    pairs = sample_preferences(big, "w0", 32, generator=torch.Generator().manual_seed(0))
    assert int(pairs.chosen_ids.max()) >= small_target.prior.vocab_size  # the test can fail
    with pytest.raises(TokenizerMismatchError, match="outside this model's vocabulary"):
        as_preferences(pairs, small_target.prior, small_target.max_new_tokens)
