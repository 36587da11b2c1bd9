"""Twists (samplers/twists.py): the exact twist from soft values, prefix potentials."""

from __future__ import annotations

import math

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.errors import ConfigError, NoMassError
from bayes_rlhf.samplers import ExactTwist, PrefixPotential
from tests.conftest import first_word_reward

PROMPT = "w1 w2"


def test_exact_and_prefix_twists(mild_target, mild_post):
    ids = torch.tensor([[3, 4], [5, 5]])
    tw = ExactTwist(mild_post)
    got = tw.log_potential([PROMPT, PROMPT], ids, mild_target)
    want = torch.tensor([mild_post.soft_value([3, 4]), mild_post.soft_value([5, 5])]) / mild_post.beta
    assert torch.allclose(got, want.double(), atol=1e-12)
    pp = PrefixPotential(first_word_reward(), scale=0.5)
    assert torch.allclose(pp.log_potential([PROMPT] * 2, ids, mild_target),
                          0.5 * torch.tensor([2.0 - 1.0, -1.0], dtype=torch.float64) / mild_target.beta)
    with pytest.raises(ConfigError):
        PrefixPotential(3)


def must_contain(word_id: int = 3, **kw) -> br.TokenReward:
    """A hard constraint a prefix can still meet later: 0 if ``word_id`` occurs, else -inf."""
    return br.TokenReward(lambda ids, mask: torch.where(((ids == word_id) & mask).any(-1), 0.0, -math.inf).double(),
                          name="must_contain_w0", **kw)


@pytest.mark.parametrize("proposal", [None, "twisted"])
def test_a_prefix_potential_refuses_minus_inf_on_an_unfinished_prefix(gpt2_lm, proposal):
    # "must contain w0" is -inf on every prefix without w0 yet: as a twist it would drop their
    # completions that meet it later (the audit measured E[Z_hat / Z] = 0.48 with the twisted proposal)
    target = br.Target(prior=gpt2_lm, reward=must_contain(), beta=1.0, max_new_tokens=3)
    with pytest.raises(ConfigError, match="-inf on the unfinished prefix.*prune=True"):
        br.smc(target, PROMPT, 8, twist="prefix", proposal=proposal, generator=torch.Generator().manual_seed(0))


def test_a_prefix_potential_prunes_a_prefix_closed_reward(gpt2_lm):
    # a banned word stays banned: TokenReward(prefix_closed=True) (as TokenMask.reward() sets it) keeps
    # psi = 0 on its violating prefixes, whatever the scale (0 * -inf would be NaN)
    ban = br.TokenReward(lambda ids, mask: torch.where(((ids == 4) & mask).any(-1), -math.inf, 0.0).double(),
                         name="no_w1", prefix_closed=True)
    target = br.Target(prior=gpt2_lm, reward=ban, beta=1.0, max_new_tokens=3)
    ids = torch.tensor([[3, 4], [5, 5]])
    for scale in (1.0, 0.0, -2.0):
        got = PrefixPotential(ban, scale=scale).log_potential([PROMPT] * 2, ids, target)
        assert got[0] == -math.inf and got[1] == 0.0
    with pytest.raises(ConfigError, match="prune"):
        PrefixPotential(ban, prune="yes")
    assert not PrefixPotential(ban, prune=False).prune


def test_smc_names_a_twist_that_is_zero_where_the_target_has_mass(gpt2_lm):
    # told to prune a reward that is not prefix-closed, SMC sees a particle of weight 0 reach a finite
    # reward and says so (before: an increment of +inf, a NaN weight and a false NoMassError)
    target = br.Target(prior=gpt2_lm, reward=must_contain(), beta=1.0, max_new_tokens=2)
    twist = PrefixPotential(must_contain(), prune=True)
    errors = []
    for seed in range(10):  # a seed whose particles all miss w0 has no mass (NoMassError): the next one
        try:
            br.smc(target, PROMPT, 16, twist=twist, ess_threshold=1e-9, generator=torch.Generator().manual_seed(seed))
        except NoMassError:
            continue
        except ConfigError as e:
            errors.append(str(e))
    assert errors and all("was -inf (psi = 0) on the prefix" in e for e in errors)


def test_an_exact_table_of_another_target_is_refused_as_twist_or_proposal(gpt2_lm, mild_target):
    # the table's reward bans w1 (-inf), the target's does not: its twist / proposal would be 0 there
    ban = br.TokenReward(lambda ids, mask: torch.where(((ids == 4) & mask).any(-1), -math.inf, 0.0).double())
    other = br.exact_posterior(br.Target(prior=gpt2_lm, reward=ban, beta=mild_target.beta, max_new_tokens=4), PROMPT)
    for kw in ({"twist": other}, {"proposal": other}):
        with pytest.raises(ConfigError, match="of another target"):
            br.smc(mild_target, PROMPT, 4, generator=torch.Generator().manual_seed(0), **kw)
    truncated = br.exact_posterior(br.Target(prior=gpt2_lm.with_top_k(3), reward=mild_target.reward,
                                             beta=mild_target.beta, max_new_tokens=4), PROMPT)
    with pytest.raises(ConfigError, match="top_k=3"):
        br.smc(mild_target, PROMPT, 4, twist=truncated, generator=torch.Generator().manual_seed(0))
