"""The public API named in DESIGN.md and the README is importable and works as named."""

import torch

import bayes_rlhf as br


def test_all_names_exist():
    for name in br.__all__:
        assert hasattr(br, name), name


def test_readme_flow(default):
    lm, reward = default
    target = br.Target(prior=lm, reward=reward, beta=1.0, max_new_tokens=3)
    post = br.exact_posterior(target, "the movie was")
    assert post.num_completions > 0 and post.mean_reward > post.prior_mean_reward
    s = post.sample(10, generator=torch.Generator().manual_seed(0))
    assert s.ids.shape == (10, 3)
    c = br.compare(lm, post)
    assert abs(c.kl_q_prior) < 1e-6 and c.kl_q_posterior > 0
    assert isinstance(br.TokenReward(lambda i, m: m.sum(-1)), br.TokenReward)
    from bayes_rlhf.models.default_model import DEFAULT_DIR

    assert isinstance(br.load_model(DEFAULT_DIR), br.CausalLM)


def test_default_reward_reads_sentiment(default):
    lm, reward = default
    ids, mask = lm.encode_completions(["very great .", "not good", "awful and boring", "not bad ."], 4)
    r = br.evaluate_reward(reward, lm, ["the movie was"] * 4, ids, mask)
    assert r.tolist() == [1.0, -1.0, -2.0, 1.0]
