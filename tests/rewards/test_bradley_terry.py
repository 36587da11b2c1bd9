"""Bradley-Terry reward model from preference pairs, and the DPO closed form on an enumerable model."""

from __future__ import annotations

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.errors import ConfigError, RewardError
from bayes_rlhf.models.toy import tiny_lm
from bayes_rlhf.rewards.bradley_terry import (BradleyTerryConfig, BradleyTerryReward, bradley_terry_loss,
                                              dpo_implied_reward, dpo_loss)


def _pairs(lm, n, seed):
    """Preference pairs labelled by a hidden true reward: +1 per "w0", -0.5 per "w2"."""
    gen = torch.Generator().manual_seed(seed)
    c = lm.sample("w1", 2 * n, 3, generator=gen)
    texts = lm.decode(c.ids, c.mask)
    true = [t.split().count("w0") - 0.5 * t.split().count("w2") for t in texts]
    pairs = []
    for a, b, ra, rb in zip(texts[::2], texts[1::2], true[::2], true[1::2]):
        if ra != rb:
            pairs.append(("w1", a, b) if ra > rb else ("w1", b, a))
    return pairs


@pytest.fixture(scope="module")
def trained():
    lm = tiny_lm("gpt2", vocab_size=7, seed=4, hidden=16)
    pairs = _pairs(lm, 400, seed=0)
    reward, losses = BradleyTerryReward.fit(lm.model, lm.tokenizer, pairs,
                                            BradleyTerryConfig(epochs=6, batch_size=32, lr=3e-3, progress=False))
    return lm, reward, losses


@pytest.fixture(scope="module")
def untrained():
    """A Bradley-Terry reward with a random head: any reward obeys the closed form."""
    lm = tiny_lm("gpt2", vocab_size=7, seed=4, hidden=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return lm, BradleyTerryReward(lm.model, lm.tokenizer), None


@pytest.mark.slow
def test_fit_learns_held_out_preferences(trained):
    lm, reward, losses = trained
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]  # from log 2 ~ 0.69 at the start
    held_out = _pairs(lm, 300, seed=1)
    # a random scorer gets 0.5; the true preference is a simple word count, learnable exactly
    assert reward.accuracy(held_out) > 0.9


def test_reward_is_usable_as_target_reward_and_reloads(untrained, tmp_path):
    lm, reward, _ = untrained
    target = br.Target(prior=lm, reward=reward, beta=0.5, max_new_tokens=2)
    ids = torch.tensor([[3, 3], [5, 2]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    r = target.rewards("w1", ids, mask)
    assert r.dtype == torch.float64 and r.shape == (2,)
    again = BradleyTerryReward.load(reward.save(tmp_path / "bt"))
    assert torch.allclose(again(["w1", "w1"], lm.decode(ids, mask)), r, atol=1e-12)


@pytest.mark.parametrize("which", ["untrained", pytest.param("trained", marks=pytest.mark.slow)])
def test_dpo_closed_form_on_enumerable_model(request, which):
    """beta log pi*/pi0 = r - beta log Z for every completion, with pi* built token by token."""
    lm, reward, _ = request.getfixturevalue(which)
    beta = 0.5
    post = br.exact_posterior(br.Target(prior=lm, reward=reward, beta=beta, max_new_tokens=3), "w1")
    for k in range(post.num_completions):
        toks = post.completion_ids[k, post.mask[k]].tolist()
        log_pi_star = sum(float(post.token_posterior(toks[:t], log=True)[toks[t]]) for t in range(len(toks)))
        log_pi_star = torch.tensor(log_pi_star, dtype=torch.float64)
        implied = float(dpo_implied_reward(log_pi_star, post.prior_log_probs[k], beta))
        assert implied == pytest.approx(float(post.rewards[k]) - beta * post.log_z, abs=1e-9)
    # so the DPO loss of pi* on preference pairs is the Bradley-Terry loss of r (log Z cancels)
    idx = torch.randperm(post.num_completions, generator=torch.Generator().manual_seed(0))[:40]
    a, b = idx[:20], idx[20:]
    r, lp, l0 = post.rewards, post.log_probs, post.prior_log_probs
    assert float(dpo_loss(lp[a], l0[a], lp[b], l0[b], beta)) == pytest.approx(
        float(bradley_terry_loss(r[a], r[b])), abs=1e-10)


def test_bad_input():
    lm = tiny_lm("gpt2", vocab_size=6, seed=0, hidden=16)
    with pytest.raises(RewardError, match="pairs is empty"):
        BradleyTerryReward.fit(lm.model, lm.tokenizer, [], BradleyTerryConfig(progress=False))
    with pytest.raises(RewardError, match="triple"):
        BradleyTerryReward.fit(lm.model, lm.tokenizer, [("w0", "w1")], BradleyTerryConfig(progress=False))
    with pytest.raises(ConfigError, match="BradleyTerryConfig.lr"):
        BradleyTerryConfig(lr=0)
    with pytest.raises(RewardError, match="transformers model"):
        BradleyTerryReward("gpt2", lm.tokenizer)


def test_dpo_loss_refuses_what_it_would_misread():
    # beta = -1 once rewarded the rejected completion; [n, 1] against [n] broadcast to n x n pairs
    import bayes_rlhf as br
    from bayes_rlhf.errors import ConfigError

    x = torch.tensor([-1.0, -2.0])
    assert torch.isfinite(br.dpo_loss(x, x - 0.5, x - 1.0, x, 0.1))
    for beta in (-1.0, 0.0, float("nan"), "1"):
        with pytest.raises(ConfigError, match="beta"):
            br.dpo_loss(x, x, x, x, beta)
    for bad in (x[:, None], x[:1], torch.zeros(2, 3)):
        with pytest.raises(ConfigError, match="shape"):
            br.dpo_loss(bad, x, x, x, 0.1)
