"""SMC's steps through MKL-packed weights (``models.packed``) on CPU float32 models: the same draws and
log Z as the plain kernels up to float32 rounding, forwards of fewer rows fall through, still unbiased."""

from __future__ import annotations

import collections
import math

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.models import packed
from bayes_rlhf.models.toy import tiny_lm
from bayes_rlhf.samplers import PrefixPotential, smc
from tests.conftest import first_word_reward

pytestmark = pytest.mark.skipif(not packed.available(), reason="torch without MKL's packed linear operators")

PROMPTS = ["w1 w2", "w3"]


def eos_heavy_float32(seed: int, boost: float = 0.5):
    """A float32 tiny llama (vocab 16) with the EOS logit raised, so particles end and rows are dropped."""
    lm = tiny_lm("llama", vocab_size=16, seed=seed, dtype=torch.float32)
    head = lm.model.get_output_embeddings()
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    biased.weight = head.weight
    with torch.no_grad():
        biased.bias.zero_()
        biased.bias[lm.eos_token_id] = boost
    lm.model.set_output_embeddings(biased)
    return lm


@pytest.fixture
def spy(monkeypatch):
    """Counts the packed layers' forwards by whether they ran the packed product (True) or fell through."""
    calls = collections.Counter()
    real = packed._linear_forward

    def linear_forward(module, weight, rows):
        inner = real(module, weight, rows)

        def forward(x):
            calls[packed._eligible(x, rows)] += 1
            return inner(x)
        return forward

    monkeypatch.setattr(packed, "_linear_forward", linear_forward)
    return calls


@pytest.mark.parametrize("kind", ["prefix_potential", "lm_proposal"])
def test_packed_steps_match_the_plain_kernels(spy, monkeypatch, kind):
    prior = eos_heavy_float32(seed=3)
    target = br.Target(prior=prior, reward=first_word_reward(), beta=1.0, max_new_tokens=5)
    kw = {"twist": PrefixPotential(first_word_reward())}
    if kind == "lm_proposal":  # a CausalLM proposal: its model's forwards are packed too
        kw["proposal"] = eos_heavy_float32(seed=4)
    # N = 4 x 2 prompts = 8 rows; compact_threshold = 0 drops finished rows at once, so later
    # forwards have fewer rows and must fall through to the plain kernels
    args = dict(ess_threshold=1.0, resampling="multinomial", compact_threshold=0.0)
    packed_ws = smc(target, PROMPTS, 4, generator=torch.Generator().manual_seed(8), **args, **kw)
    assert spy[True] > 0 and spy[False] > 0  # both paths ran
    assert all("forward" not in m.__dict__ for m in prior.model.modules())  # the block was left
    ran = dict(spy)
    monkeypatch.setitem(packed._STATE, "ok", False)  # as if torch had no MKL packed operators
    plain_ws = smc(target, PROMPTS, 4, generator=torch.Generator().manual_seed(8), **args, **kw)
    assert dict(spy) == ran  # nothing was patched this time
    assert torch.equal(packed_ws.ids, plain_ws.ids) and torch.equal(packed_ws.mask, plain_ws.mask)
    # float32 products summed in another order: a few ulps per log-prob, summed over <= 5 tokens
    torch.testing.assert_close(packed_ws.log_z, plain_ws.log_z, atol=1e-5, rtol=0)
    torch.testing.assert_close(packed_ws.log_weights, plain_ws.log_weights, atol=1e-5, rtol=0)


def test_packed_steps_stay_unbiased(spy):
    # A float32 prior (vocab 8, T = 4: 4,681 completions enumerated), a prefix potential that is not
    # the exact twist and resampling whenever the weights differ. 25 batches of 8 prompts x N = 8
    # (64 rows, the most packed_linears packs) = R = 200 runs; the mean of exp(log_z - log Z) is 1
    # within 3 standard errors of the runs (as test_smc.test_z_unbiased_every_scheme).
    prior = tiny_lm("llama", vocab_size=8, seed=1, dtype=torch.float32)
    target = br.Target(prior=prior, reward=first_word_reward(), beta=1.5, max_new_tokens=4)
    post = br.exact_posterior(target, "w1 w2")
    gen = torch.Generator().manual_seed(21)
    z = torch.cat([torch.exp(smc(target, ["w1 w2"] * 8, 8, twist=PrefixPotential(first_word_reward(), scale=0.7),
                                 ess_threshold=1.0, generator=gen).log_z - post.log_z) for _ in range(25)])
    assert spy[True] > 0
    se = float(z.std() / math.sqrt(z.numel()))
    assert se < 0.05
    assert abs(float(z.mean()) - 1.0) < 3 * se
