"""The learned twist (samplers/learned_twist.py): exact prefix values, and a GRU twist fitted to them."""

from __future__ import annotations

import math

import pytest
import torch

from bayes_rlhf.samplers import LearnedTwist, exact_prefix_values, fit_twist, smc

PROMPT = "w1 w2"


def test_exact_prefix_values_match_soft_value(mild_post):
    ids, lengths, log_v, weights = exact_prefix_values(mild_post)
    assert lengths.min() == 0 and lengths.max() == mild_post.completion_ids.shape[1] - 1
    for k in torch.randperm(ids.shape[0], generator=torch.Generator().manual_seed(0))[:40].tolist():
        prefix = ids[k, : lengths[k]].tolist()
        assert float(log_v[k]) == pytest.approx(mild_post.soft_value(prefix) / mild_post.beta, abs=1e-10)
    # the empty prefix: V_0 / beta = log Z, reached with mass 1 under both prior and posterior
    root = torch.nonzero(lengths == 0).squeeze(-1)
    assert float(log_v[root]) == pytest.approx(mild_post.log_z, abs=1e-10)
    assert float(weights[root]) == pytest.approx(1.0, abs=1e-10)


@pytest.mark.slow
def test_learned_twist_fits_soft_values_and_reduces_variance(mild_target, mild_post):
    # After fitting, the weighted RMSE of the twist against V / beta is far below the spread of
    # V / beta itself, and SMC with it has lower log Z variance than bootstrap over 100 runs
    # with the twisted proposal q ∝ pi0 psi (both over the same number of runs, N = 8 particles;
    # the exact twist gives variance 0 there, bootstrap about 0.09).
    torch.manual_seed(0)  # test code only: initialises the twist's weights reproducibly
    twist = LearnedTwist(mild_target.prior.vocab_size, hidden=32).double()
    losses = fit_twist(twist, mild_post, steps=150, lr=2e-2, batch_size=128, generator=torch.Generator().manual_seed(0))
    assert losses[-1] < losses[0] / 5
    ids, lengths, log_v, w = exact_prefix_values(mild_post)
    prompt_ids = mild_target.prior.encode_prompt(PROMPT)
    pred = twist.predict([prompt_ids + ids[k, : lengths[k]].tolist() for k in range(ids.shape[0])],
                         torch.zeros((ids.shape[0], 0), dtype=torch.long)).detach()
    w = w / w.sum()
    rmse = math.sqrt(float((w * (pred - log_v) ** 2).sum()))
    spread = math.sqrt(float((w * (log_v - (w * log_v).sum()) ** 2).sum()))
    assert rmse < spread / 3
    R = 100
    g = torch.Generator().manual_seed(1)
    learned = smc(mild_target, [PROMPT] * R, 8, proposal="twisted", twist=twist, generator=g).log_z
    boot = smc(mild_target, [PROMPT] * R, 8, generator=g).log_z
    assert float(learned.var()) < float(boot.var()) / 3


def test_fit_twist_on_a_posterior_read_back_from_a_run_directory(mild_target, mild_post, tmp_path):
    # load_run gives posteriors without their model (lm=None, only a Vocabulary); fitting a twist
    # reads the prompt's ids from that vocabulary: the same fit, step for step, as on the original
    from bayes_rlhf.diagnostics.run_dir import load_run, save_run

    save_run(tmp_path / "run", [mild_post])
    loaded = load_run(tmp_path / "run").posteriors[0]
    assert loaded.lm is None
    assert loaded.vocabulary.encode_prompt(PROMPT) == mild_target.prior.encode_prompt(PROMPT)
    losses = []
    for post in (mild_post, loaded):
        torch.manual_seed(0)  # test code only: the same initial weights for both fits
        twist = LearnedTwist(mild_target.prior.vocab_size, hidden=8).double()
        losses.append(fit_twist(twist, post, steps=3, batch_size=16, generator=torch.Generator().manual_seed(0)))
    assert losses[1] == pytest.approx(losses[0], rel=1e-12, abs=0.0)


def test_the_old_import_path_still_works():
    import bayes_rlhf.samplers.learned_twist as learned
    import bayes_rlhf.samplers.twists as twists
    from bayes_rlhf.samplers.twists import LearnedTwist as Old, fit_twist as old_fit

    assert Old is LearnedTwist is learned.LearnedTwist and old_fit is fit_twist
    assert twists.exact_prefix_values is exact_prefix_values
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        twists.nothing
