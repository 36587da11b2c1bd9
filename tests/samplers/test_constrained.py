"""Locally constrained SMC proposals and the cheap twisted proposal, against exact enumeration."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.errors import ConfigError, ConstraintMismatchError
from bayes_rlhf.samplers import (LocallyConstrained, NextTokenConstraint, PrefixConstraint, PrefixPotential,
                                 TokenMask, TwistedProposal, smc)
from tests.conftest import first_word_reward

PROMPT = "w1 w2"
R, N = 200, 8  # R independent runs of N particles, batched as R copies of the prompt


def _forbidden(vocab_size: int = 8) -> torch.Tensor:
    """A lipogram on the tiny vocabulary: w1 (id 4) and w3 (id 6) may never appear."""
    bad = torch.zeros(vocab_size, dtype=torch.bool)
    bad[[4, 6]] = True
    return bad


@pytest.fixture(scope="module")
def mask():
    return TokenMask(_forbidden())


@pytest.fixture(scope="module")
def lipogram_target(gpt2_lm, mask):
    # the constraint plus a reward term, so the weights vary beyond the allowed mass
    reward = br.WeightedSum([(1.0, first_word_reward()), (1.0, mask.reward())])
    return br.Target(prior=gpt2_lm, reward=reward, beta=1.5, max_new_tokens=4)


@pytest.fixture(scope="module")
def lipogram_post(lipogram_target):
    return br.exact_posterior(lipogram_target, PROMPT)


def _z_check(ws, post, k: float = 4.0):
    """mean and SE of Z_hat / Z over the R runs; the mean is 1 within k SE (k = 4: a false alarm
    has probability ~6e-5 for a normal mean, and the CLT holds well at R = 200 for these mild weights)."""
    z = torch.exp(ws.log_z - post.log_z)
    mean, se = float(z.mean()), float(z.std() / math.sqrt(z.numel()))
    return mean, se, abs(mean - 1.0) < k * se


BASES = {
    "prior": lambda mask, other: dict(proposal=LocallyConstrained(mask)),
    "prior_prefix_twist": lambda mask, other: dict(proposal=LocallyConstrained(mask), twist=PrefixPotential(
        first_word_reward())),
    "twisted": lambda mask, other: dict(proposal=LocallyConstrained(mask, base="twisted"), twist="prefix"),
    "twisted_top_k": lambda mask, other: dict(proposal=LocallyConstrained(mask, base=TwistedProposal(top_k=1)),
                                              twist=PrefixPotential(first_word_reward())),
    "policy": lambda mask, other: dict(proposal=LocallyConstrained(mask, base=other)),
}


@pytest.mark.parametrize("base", sorted(BASES))
def test_locally_constrained_is_unbiased_and_no_particle_dies(lipogram_target, lipogram_post, mask, other_policy,
                                                              base):
    ws = smc(lipogram_target, [PROMPT] * R, N, ess_threshold=1.0, generator=torch.Generator().manual_seed(3),
             **BASES[base](mask, other_policy))
    mean, se, ok = _z_check(ws, lipogram_post)
    assert se < 0.05 and ok, (mean, se)
    assert bool(torch.isfinite(ws.log_weights).all()) and bool(torch.isfinite(ws.rewards).all())  # none died
    assert not bool((_forbidden()[ws.ids] & ws.mask).any())  # no forbidden token was ever drawn
    assert int(ws.history.num_resampling_steps.sum()) > R  # the allowed mass alone makes the weights differ


def test_ess_triggered_resampling_with_the_constraint(lipogram_target, lipogram_post, mask):
    # ess_threshold 0.9 (at 0.5 these mild weights never fall that far): resampling happens only
    # where the ESS falls, and the estimate stays unbiased
    ws = smc(lipogram_target, [PROMPT] * R, N, proposal=LocallyConstrained(mask), ess_threshold=0.9,
             generator=torch.Generator().manual_seed(5))
    mean, se, ok = _z_check(ws, lipogram_post)
    assert ok, (mean, se)
    steps = int(ws.history.num_resampling_steps.sum())
    assert 0 < steps < R * lipogram_target.max_new_tokens
    assert bool(torch.isfinite(ws.log_weights).all())
    assert "without a twist" not in ws.info.get("note", "")  # the allowed mass reweights, twist or not


def test_bootstrap_loses_particles_where_the_constrained_proposal_does_not(lipogram_target):
    ws = smc(lipogram_target, [PROMPT] * 20, N, generator=torch.Generator().manual_seed(3))
    assert int((~torch.isfinite(ws.log_weights)).sum()) > 0


class ForgetsTheAllowedMass(LocallyConstrained):
    """A planted error: the same draws, but log q is the masked prior without renormalising
    (sampling renormalises it implicitly), so the weights miss log A."""

    def log_probs(self, state, view):
        out = super().log_probs(state, view)
        allowed = torch.isfinite(out.log_q)
        return dataclasses.replace(out, log_q=view.prior_logp.masked_fill(~allowed, -math.inf))


def test_unbiasedness_check_detects_a_forgotten_allowed_mass(lipogram_target, lipogram_post, mask):
    ws = smc(lipogram_target, [PROMPT] * R, N, proposal=ForgetsTheAllowedMass(mask), ess_threshold=1.0,
             generator=torch.Generator().manual_seed(3))
    mean, se, ok = _z_check(ws, lipogram_post)
    assert not ok, (mean, se)


def test_every_form_of_the_constraint_gives_the_same_run(lipogram_target, mask):
    allowed = ~_forbidden()

    def next_tokens(prompts, prefixes):
        return allowed.expand(prefixes.shape[0], -1)

    def no_bad_token(ids, m):
        return ~(_forbidden()[ids] & m).any(-1)

    forms = [mask, _forbidden(), NextTokenConstraint(next_tokens), PrefixConstraint(mask.reward()),
             br.Constraint(no_bad_token, on="tokens")]
    runs = [smc(lipogram_target, [PROMPT] * 4, N, proposal=LocallyConstrained(form), twist="prefix",
                generator=torch.Generator().manual_seed(1)) for form in forms]
    for ws in runs[1:]:
        assert torch.equal(ws.ids, runs[0].ids) and torch.allclose(ws.log_z, runs[0].log_z, atol=1e-12, rtol=0)


def test_from_text_forbids_tokens_by_their_text(gpt2_lm):
    m = TokenMask.from_text(gpt2_lm, lambda s: "1" in s or "3" in s)
    assert torch.equal(m.forbidden, _forbidden())  # w1, w3; special tokens decode to '' and stay allowed


def test_a_constraint_that_forbids_what_the_target_allows_is_refused(gpt2_lm, mask):
    loose = br.Target(prior=gpt2_lm, reward=first_word_reward(), beta=1.5, max_new_tokens=4)
    with pytest.raises(ConstraintMismatchError, match="biased"):
        smc(loose, [PROMPT] * 4, N, proposal=LocallyConstrained(mask), generator=torch.Generator().manual_seed(0))
    smc(loose, [PROMPT] * 4, N, proposal=LocallyConstrained(mask, check=False),
        generator=torch.Generator().manual_seed(0))  # the check can be turned off


def test_a_target_with_more_hard_constraints_stays_unbiased_unless_strict(gpt2_lm, mask):
    # the target also demands EOS within T: particles that run to T die, as in bootstrap SMC.
    # P(ends | allowed) ~ 0.42, so N = 32 (all 32 of a run die with probability ~3e-8) and R = 100.
    def ends(ids, m):
        return ((ids == 2) & m).any(-1)

    reward = br.WeightedSum([(1.0, mask.reward()), (1.0, br.Constraint(ends, on="tokens"))])
    target = br.Target(prior=gpt2_lm, reward=reward, beta=1.5, max_new_tokens=4)
    post = br.exact_posterior(target, PROMPT)
    ws = smc(target, [PROMPT] * 100, 32, proposal=LocallyConstrained(mask), ess_threshold=1.0,
             generator=torch.Generator().manual_seed(2))
    mean, se, ok = _z_check(ws, post)
    assert ok, (mean, se)
    assert int((~torch.isfinite(ws.log_weights)).sum()) > 0
    with pytest.raises(ConstraintMismatchError, match="strict=False"):
        smc(target, [PROMPT] * 8, N, proposal=LocallyConstrained(mask, strict=True),
            generator=torch.Generator().manual_seed(2))


def test_a_prefix_with_no_allowed_token_has_weight_zero_and_stays_unbiased(gpt2_lm):
    # nothing may follow w0 (id 3), so w0 can only be the T-th token; the target says the same
    def after_w0(prompts, prefixes):
        out = torch.ones((prefixes.shape[0], 8), dtype=torch.bool)
        if prefixes.shape[1]:
            out[prefixes[:, -1] == 3] = False
        return out

    def w0_last(ids, m):
        inner = (ids[:, :-1] == 3) & m[:, 1:]
        return ~inner.any(-1)

    reward = br.WeightedSum([(1.0, first_word_reward(word_id=5)), (1.0, br.Constraint(w0_last, on="tokens"))])
    target = br.Target(prior=gpt2_lm, reward=reward, beta=1.5, max_new_tokens=4)
    post = br.exact_posterior(target, PROMPT)
    ws = smc(target, [PROMPT] * R, N, proposal=LocallyConstrained(NextTokenConstraint(after_w0)),
             ess_threshold=1.0, generator=torch.Generator().manual_seed(4))
    mean, se, ok = _z_check(ws, post)
    assert ok, (mean, se)
    assert int((~torch.isfinite(ws.log_weights)).sum()) > 0  # dead-end particles got weight 0


def test_a_top_k_prior_locally_constrained_is_unbiased(gpt2_lm, mask):
    # top-k rows are mostly -inf (the allowed mass comes from a softmax of them): Z_hat / Z has mean 1
    lm = br.CausalLM(gpt2_lm.model, gpt2_lm.tokenizer, device="cpu", top_k=4)
    reward = br.WeightedSum([(1.0, first_word_reward()), (1.0, mask.reward())])
    target = br.Target(prior=lm, reward=reward, beta=1.5, max_new_tokens=4)
    post = br.exact_posterior(target, PROMPT)
    ws = smc(target, [PROMPT] * R, N, proposal=LocallyConstrained(mask), ess_threshold=1.0,
             generator=torch.Generator().manual_seed(5))
    mean, se, ok = _z_check(ws, post)
    assert ok, (mean, se)
    assert se < 0.05  # the check has power: a 20% bias would fail it


def test_bad_constraints_are_refused_before_any_work(lipogram_target, mask):
    with pytest.raises(ConfigError, match="entries"):
        smc(lipogram_target, PROMPT, 4, proposal=LocallyConstrained(torch.zeros(5, dtype=torch.bool)))
    with pytest.raises(ConfigError, match="BoolTensor"):
        TokenMask(torch.zeros(8))
    with pytest.raises(ConfigError, match="every token"):
        TokenMask(torch.ones(8, dtype=torch.bool))
    with pytest.raises(ConfigError, match="constraint must be"):
        LocallyConstrained(lambda prompts, prefixes: None)
    with pytest.raises(ConfigError, match="base"):
        LocallyConstrained(mask, base="bootstrap")
    with pytest.raises(ConfigError, match="bools"):
        LocallyConstrained(mask, check="yes")
    wrong = NextTokenConstraint(lambda prompts, prefixes: torch.ones((prefixes.shape[0], 3), dtype=torch.bool))
    with pytest.raises(ConfigError, match="BoolTensor"):
        smc(lipogram_target, PROMPT, 4, proposal=LocallyConstrained(wrong))


# ---------------------------------------------------------------- the cheap twisted proposal
class CountingReward:
    """first_word_reward that counts the rows it is evaluated on."""

    def __init__(self):
        self.rows, self.inner = 0, first_word_reward()

    def score_batch(self, lm, prompts, ids, mask):
        self.rows += ids.shape[0]
        return self.inner.score_batch(lm, prompts, ids, mask)


@pytest.mark.parametrize("kw", [dict(top_p=0.5), dict(top_k=1), dict(top_p=0.9, top_k=2)])
def test_top_p_twisted_proposal_is_unbiased_and_cheaper(mild_target, mild_post, kw):
    def run(proposal):
        count = CountingReward()
        ws = smc(mild_target, [PROMPT] * R, N, proposal=proposal, twist=PrefixPotential(count), ess_threshold=1.0,
                 generator=torch.Generator().manual_seed(6))
        return ws, count.rows

    cheap, cheap_rows = run(TwistedProposal(**kw))
    _, exact_rows = run("twisted")
    mean, se, ok = _z_check(cheap, mild_post)
    assert se < 0.05 and ok, (mean, se)
    assert cheap_rows < exact_rows / 2  # the twist ran on the head (and the drawn token) only


def test_top_p_uses_the_parent_potential_outside_the_head(mild_target, mild_post):
    # with the exact twist and a head of one token the proposal is not pi*, but stays unbiased
    ws = smc(mild_target, [PROMPT] * R, N, proposal=TwistedProposal(top_k=1), twist=mild_post,
             generator=torch.Generator().manual_seed(7))
    mean, se, ok = _z_check(ws, mild_post)
    assert ok and se > 1e-6, (mean, se)
    exact = smc(mild_target, PROMPT, N, proposal=TwistedProposal(top_p=1.0), twist=mild_post,
                generator=torch.Generator().manual_seed(7))
    assert abs(float(exact.log_z) - mild_post.log_z) < 1e-9  # the whole support as head: zero variance


def test_default_twisted_proposal_is_unchanged(mild_target):
    a = smc(mild_target, [PROMPT] * 3, N, proposal="twisted", twist="prefix",
            generator=torch.Generator().manual_seed(2))
    b = smc(mild_target, [PROMPT] * 3, N, proposal=TwistedProposal(), twist="prefix",
            generator=torch.Generator().manual_seed(2))
    assert torch.equal(a.ids, b.ids) and torch.equal(a.log_z, b.log_z)


@pytest.mark.parametrize("kw", [dict(top_p=0.0), dict(top_p=1.5), dict(top_p="0.9"), dict(top_k=0),
                                dict(top_k=1.5)])
def test_bad_top_p_refused(kw):
    with pytest.raises(ConfigError):
        TwistedProposal(**kw)



@pytest.mark.parametrize("top_p, top_k", [(0.5, None), (0.9, 100), (0.999, None), (None, 7)])
def test_head_matches_a_full_sort(top_p, top_k):
    # V = 300 > the first partial top-k (64): the head grows until each row holds top_p of its mass
    g = torch.Generator().manual_seed(0)
    lp = torch.log_softmax(torch.randn(5, 300, generator=g, dtype=torch.float64) * 0.5, -1)
    lp[1, 100:] = -math.inf  # a row with a smaller support
    log_mass = torch.logsumexp(lp, -1)
    rows, toks = TwistedProposal(top_p=top_p, top_k=top_k)._head(lp, log_mass)
    order = torch.argsort(lp, -1, descending=True)
    for i in range(5):
        share = torch.exp(lp[i, order[i]] - log_mass[i])
        before = share.cumsum(0) - share
        keep = torch.isfinite(lp[i, order[i]])
        if top_p is not None:
            keep &= before < top_p
        if top_k is not None:
            keep &= torch.arange(300) < top_k
        assert set(toks[rows == i].tolist()) == set(order[i][keep].tolist())
    assert 64 < int((rows == 0).sum()) < 300 or top_p != 0.999  # it had to grow past the first 64


def test_twisted_base_evaluates_allowed_tokens_only(lipogram_target, mask):
    # 6 of the 8 tokens are allowed, one of them EOS (its potential is the reward, not the twist):
    # the twist runs on exactly 5 candidates per live particle at each step before the last
    count = CountingReward()
    ws = smc(lipogram_target, [PROMPT] * 8, N, proposal=LocallyConstrained(mask, base="twisted"),
             twist=PrefixPotential(count), generator=torch.Generator().manual_seed(1))
    T = lipogram_target.max_new_tokens
    live = 8 * N + int(ws.history.num_alive[: T - 2].sum())  # particles generating at steps 0 .. T-2
    assert count.rows == 5 * live


def test_must_end_carries_the_eos_constraint_too(gpt2_lm):
    # "no w1 / w3 and end with EOS within T" as one TokenMask: at the last position only EOS is
    # allowed, so no particle dies, strict=True holds, and Z is the exact one (4 SE over R runs)
    mask = TokenMask(_forbidden(), must_end=True, eos_token_id=2)
    reward = br.WeightedSum([(1.0, first_word_reward()), (1.0, mask.reward())])
    target = br.Target(prior=gpt2_lm, reward=reward, beta=1.5, max_new_tokens=4)
    post = br.exact_posterior(target, PROMPT)
    ws = smc(target, [PROMPT] * R, N, proposal=LocallyConstrained(mask, strict=True), ess_threshold=1.0,
             generator=torch.Generator().manual_seed(2))
    mean, se, ok = _z_check(ws, post)
    assert ok, (mean, se)
    assert bool(torch.isfinite(ws.log_weights).all())
    assert bool(((ws.ids == 2) & ws.mask).any(-1).all())  # every completion ended with EOS
    # the plain lipogram mask on this target: the check passes (r is -inf beyond it), particles die
    with pytest.raises(ConstraintMismatchError):
        smc(target, [PROMPT] * 8, N, proposal=LocallyConstrained(TokenMask(_forbidden()), strict=True),
            generator=torch.Generator().manual_seed(2))
    with pytest.raises(ConfigError, match="EOS is forbidden"):
        TokenMask(torch.tensor([False, False, True, False]), must_end=True, eos_token_id=2)
    with pytest.raises(ConfigError, match="eos_token_id"):
        TokenMask(_forbidden(), must_end=True).reward()


def test_the_prior_as_base_is_the_prior_proposal(lipogram_target, mask):
    proposal = LocallyConstrained(mask, base=lipogram_target.prior)
    a = smc(lipogram_target, [PROMPT] * 4, N, proposal=proposal, generator=torch.Generator().manual_seed(1))
    b = smc(lipogram_target, [PROMPT] * 4, N, proposal=LocallyConstrained(mask),
            generator=torch.Generator().manual_seed(1))
    assert proposal.lm is None  # no second model stepped beside the prior
    assert torch.equal(a.ids, b.ids) and torch.equal(a.log_z, b.log_z)


def test_the_masked_prior_is_the_twisted_proposal_of_the_constraint(gpt2_lm, mask):
    # with the constraint as the whole reward, q ∝ pi0 1[allowed] is the twisted proposal for the
    # twist 1[prefix allowed], and both weight a step by pi0(allowed | prefix): the same run
    target = br.Target(prior=gpt2_lm, reward=mask.reward(), beta=1.0, max_new_tokens=4)
    a = smc(target, [PROMPT] * 6, N, proposal=LocallyConstrained(mask), ess_threshold=1.0,
            generator=torch.Generator().manual_seed(3))
    b = smc(target, [PROMPT] * 6, N, proposal="twisted", twist=PrefixPotential(mask.reward()), ess_threshold=1.0,
            generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.ids, b.ids)
    assert torch.allclose(a.log_z, b.log_z, atol=1e-10, rtol=0)
