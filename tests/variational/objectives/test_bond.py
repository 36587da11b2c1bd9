"""Best-of-N distillation: the best-of-N law as a posterior (exact, ties included, and estimated from
prior draws), BOND and vBoN trained to KL(q || BoN_N) <= 0.05 on the default model."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from fractions import Fraction
from pathlib import Path

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.errors import ConfigError, RewardError
from bayes_rlhf.samplers.best_of_n import best_of_n_log_probs
from bayes_rlhf.variational import TrainerConfig, train_policy
from bayes_rlhf.variational.objectives import bon_posterior, bon_target
from bayes_rlhf.variational.objectives.bond import BestOfNReward, RewardLevels
from bayes_rlhf.variational.settings import BoNConfig

ROOT = Path(__file__).resolve().parents[3]


def _exact_levels(post, n):
    """r_N per reward level in exact rational arithmetic: ((F + G)^N - F^N) / G with the level masses
    rounded to float64 and renormalised (the only rounding)."""
    levels, inv = torch.unique(post.rewards, sorted=True, return_inverse=True)
    g = torch.zeros(levels.numel(), dtype=torch.float64).index_add_(0, inv, post.prior_log_probs.exp())
    gs = [Fraction(float(x)) for x in g]
    total = sum(gs)
    out, below = [], Fraction(0)
    for x in gs:
        x = x / total
        out.append(math.log(((below + x) ** n - below ** n) / x))
        below += x
    return torch.tensor(out, dtype=torch.float64)[inv]


@pytest.mark.parametrize("n", [1, 2, 4, 16])
def test_bon_posterior_is_the_best_of_n_law_ties_included(default_target, n):
    _, post = default_target  # rewards are integers -4..4: every level is a tie of many completions
    b = bon_posterior(post, n)
    assert b.beta == 1.0 and abs(b.log_z) < 1e-12  # the best-of-N law needs no normaliser
    expected = post.prior_log_probs - torch.logsumexp(post.prior_log_probs, 0) + _exact_levels(post, n)
    assert (b.log_probs - expected).abs().max() < 1e-10
    # samplers.best_of_n computes (F+G)^N - F^N by log1p(-(F/(F+G))^N), which loses digits on a level
    # whose mass is tiny beside F (the top level here has G = 3e-14, so 2e-4 nats there); elsewhere
    # both agree to 1e-9, and the laws' KL is 0 to 1e-12
    ref = best_of_n_log_probs(post, n)
    big = post.prior_log_probs.exp() > 1e-9
    assert (b.log_probs - ref)[big].abs().max() < 1e-9
    assert abs(float((b.probs * (b.log_probs - ref)).sum())) < 1e-12


def test_bon_posterior_of_a_table_without_its_model(gpt2_post):
    # a table read back by load_run holds a Vocabulary, not the model (lm=None)
    bare = br.ExactPosterior(gpt2_post.prompt, gpt2_post.completion_ids, gpt2_post.mask, gpt2_post.prior_log_probs,
                             gpt2_post.rewards, gpt2_post.beta, vocabulary=gpt2_post.vocabulary)
    b = bon_posterior(bare, 4)
    assert b.lm is None and b.vocabulary is gpt2_post.vocabulary
    assert torch.equal(b.log_probs, bon_posterior(gpt2_post, 4).log_probs) and b.completions == gpt2_post.completions


def test_the_bon_target_gives_the_same_law_through_enumeration(default_target):
    target, post = default_target
    bt = bon_target(target, 4, [post.prompt], posteriors={post.prompt: post})
    assert isinstance(bt.reward, BestOfNReward) and bt.beta == 1.0 and bt.reward.name == "best_of_4(sentiment)"
    again = br.exact_posterior(bt, post.prompt)
    assert (again.log_probs - bon_posterior(post, 4).log_probs).abs().max() < 1e-12
    enumerated = bon_target(target, 4, post.prompt)  # enumerates the prior itself
    assert (br.exact_posterior(enumerated, post.prompt).log_probs - again.log_probs).abs().max() < 1e-12
    with pytest.raises(RewardError, match="bon_target"):
        br.exact_posterior(bt, "the food is")


def test_levels_by_hand_unseen_rewards_and_tolerance():
    f64 = dict(dtype=torch.float64)
    lv = RewardLevels.from_table(torch.tensor([2.0, 0.0, 1.0, 0.0], **f64),
                                 torch.tensor([0.2, 0.3, 0.3, 0.2], **f64).log())
    assert lv.levels.tolist() == [0.0, 1.0, 2.0] and lv.log_mass.exp().tolist() == pytest.approx([0.5, 0.3, 0.2])
    r = torch.tensor([0.0, 1.0, 2.0, 1.5, -1.0, 1.0 + 1e-12, -math.inf], dtype=torch.float64)
    got = lv.log_ratio(r, 3).tolist()
    # N = 3: ((F+G)^3 - F^3) / G at each level; an unseen 1.5 has F = 0.8, G = 0 (the limit 3 F^2);
    # below every level F = half the smallest mass (0.1); 1 + 1e-12 is level 1; -inf is below all too
    want = [math.log(0.5 ** 2), math.log((0.8 ** 3 - 0.5 ** 3) / 0.3), math.log((1 - 0.8 ** 3) / 0.2),
            math.log(3 * 0.8 ** 2), math.log(3 * 0.1 ** 2), math.log((0.8 ** 3 - 0.5 ** 3) / 0.3),
            math.log(3 * 0.1 ** 2)]
    assert got == pytest.approx(want, rel=1e-12)
    assert lv.log_ratio(r, 1).tolist() == [0.0] * 7  # best of 1 is the prior
    emp = RewardLevels.from_samples(torch.tensor([1.0, 1.0, 3.0, 0.0], **f64))
    assert emp.log_mass.exp().tolist() == pytest.approx([0.25, 0.5, 0.25])


def test_the_quantile_estimated_from_prior_draws_approaches_the_exact_law(default_target):
    target, post = default_target
    exact = bon_posterior(post, 4)
    kls = []
    for m in (256, 16384):
        bt = bon_target(target, 4, post.prompt, quantile="prior", num_samples=m,
                        generator=torch.Generator().manual_seed(0))
        est = br.exact_posterior(bt, post.prompt)
        kls.append(float((exact.probs * (exact.log_probs - est.log_probs)).sum()))
    # the law is a function of the 9 level masses, estimated with relative errors ~ 1/sqrt(M G); the
    # estimated level law's own KL is about (levels - 1) / (2 M), and the best-of-N law's (weighted to
    # the top levels) measured 2.5e-4 at M = 256 and 2.7e-5 at M = 16384 with this seed, well inside
    assert 0 < kls[1] < 8 / (2 * 16384) and kls[1] < kls[0] < 8 / (2 * 256), kls


def test_inputs_are_checked_before_work(default_target):
    target, post = default_target
    with pytest.raises(ConfigError, match="bon_n must be an integer >= 1"):
        bon_target(target, 0, post.prompt)
    with pytest.raises(ConfigError, match="quantile must be one of"):
        bon_target(target, 4, post.prompt, quantile="smc")
    with pytest.raises(ConfigError, match="bon_target takes a bayes_rlhf.Target"):
        bon_target(post, 4, post.prompt)
    with pytest.raises(ConfigError, match=r"TrainerConfig.bon_n \(bon.n\) must be an integer >= 1"):
        TrainerConfig(objective="bond", bon_n=0)
    cfg = TrainerConfig(objective="vbon", bon_n=8, bon_quantile="prior")
    assert cfg.bon == BoNConfig(n=8, quantile="prior") and cfg.bound_objective().source.kind == "policy"
    assert TrainerConfig(objective="bond", bon_proposal="prior").bound_objective().source.kind == "prior"
    assert "bon_n" not in TrainerConfig().fingerprint_dict()  # earlier configs keep their fingerprints
    with pytest.raises(ConfigError, match="kl_target cannot steer objective='vbon'"):
        TrainerConfig(objective="vbon", kl_target=0.5)  # the controller would re-tilt the best-of-N law


def test_a_short_run_fits_the_bon_law_and_the_evaluator_measures_against_it(small_target, small_posts, fast_config):
    post = small_posts["w0"]
    b = bon_posterior(post, 4)
    before = br.compare(small_target.prior, b).kl_q_posterior
    policy, hist = train_policy(small_target, "w0", fast_config(steps=30, objective="bond", bon_n=4, eval_every=30),
                                evaluator=True)  # True: the BoN target's own posterior
    after = br.compare(policy, b).kl_q_posterior
    assert hist.last["kl_q_posterior"] == pytest.approx(after, abs=1e-12)
    assert after < 0.5 * before, (before, after)  # deterministic (fixed seed); halving is far outside noise
    # the history's rewards are r_N (beta 1): mean_reward - kl_prior estimates -KL(q || BoN_4)
    row = hist.last
    assert row["objective"] == pytest.approx(row["mean_reward"] - row["kl_prior"])


def _bon_run(default_target, steps, lr, **kw):
    target, post = default_target
    b = bon_posterior(post, kw.get("bon_n", 4))
    cfg = TrainerConfig(steps=steps, lr=lr, samples_per_prompt=64, progress=False, eval_every=1000, **kw)
    policy, _ = train_policy(target, post.prompt, cfg)
    return br.compare(policy, b).kl_q_posterior


@pytest.mark.slow
@pytest.mark.parametrize("kw", [dict(objective="bond", bon_n=4), dict(objective="vbon", bon_n=4),
                                dict(objective="bond", bon_n=4, bon_proposal="prior"),
                                dict(objective="bond", bon_n=4, bon_quantile="prior", bon_quantile_samples=4096)],
                         ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_distilled_policy_reaches_005_nats_of_best_of_n(default_target, kw):
    # deterministic runs (fixed seed, one thread); KL(pi0 || BoN_4) is 1.01 nats here. BoN_4 / pi0 spans
    # e^-111 to 4 (r_N is -6.3 on the reward -2 level, 12% of pi0), so its gradients are noisier than pi*'s.
    # At lr 2e-3 (64 samples) a run can cross a sharp ridge of the loss: on an AMD EPYC, vBoN seed 0 went
    # from 0.016 to 8.99 nats in the one optimiser step 389 (largest parameter change 0.004; the same
    # jump in float64, so the surface, not rounding) and ended at 0.40 at step 400, where on a Xeon it
    # had ended at 0.017-0.029 (seeds 0-2); BOND at 300 steps ended at 0.025-0.059 (seeds 0-4). At
    # lr 1e-3 for 600 steps, on the EPYC: BOND 0.008-0.021 and vBoN 0.009-0.016 (no evaluation, every 10
    # steps, above 0.07 after step 200), BOND with estimated quantiles 0.007-0.010 (seeds 0-4 each).
    # BOND from prior samples (importance weights BoN_4 / pi0) converges more slowly and its importance
    # weights are the noise, not the step count: at lr 2e-3 for 300 steps 0.036-0.141 (seeds 0-4, EPYC;
    # 0.046-0.131 for seeds 0-2 on the Xeon), at lr 1e-3 for 600 steps 0.028-0.172; a runaway (it reached
    # 24-41 nats before prior samples ran without the f-DPG baseline) fails its bound of 0.2 either way.
    if kw.get("bon_proposal") == "prior":
        kl, bound = _bon_run(default_target, 300, 2e-3, **kw), 0.2
    else:
        kl, bound = _bon_run(default_target, 600, 1e-3, **kw), 0.05
    assert kl <= bound, (kw, kl)


@pytest.mark.slow
def test_the_analysis_script_runs(tmp_path):
    spec = importlib.util.spec_from_file_location("bon_distillation", ROOT / "analysis" / "bon_distillation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--out", str(tmp_path), "--ns", "2", "--steps", "5", "--max-new-tokens", "2"]) == 0
    rows = json.loads((tmp_path / "result.json").read_text())
    assert {r["objective"] for r in rows} == {"bond", "vbon"} and all(math.isfinite(r["kl_to_bon"]) for r in rows)
    assert (tmp_path / "bon_distillation.pdf").exists() and (tmp_path / "bon_distillation.png").exists()


def test_a_posterior_of_pi_star_is_refused_as_the_evaluator_of_a_bon_run(small_target, fast_config):
    target = dataclasses.replace(small_target, beta=1.0)  # beta 1: the BoN target's beta, so only the reward differs
    post = br.exact_posterior(target, "w0")
    cfg = fast_config(steps=2, objective="bond", bon_n=4, eval_every=2)
    with pytest.raises(ConfigError, match="another reward"):  # it would measure against pi*, not BoN_4
        train_policy(target, "w0", cfg, evaluator=post)
    _, hist = train_policy(target, "w0", cfg, evaluator=bon_posterior(post, 4))
    assert math.isfinite(hist.last["kl_q_posterior"])
