"""SMC proposals as one protocol: the conversions, the vectorised exact proposal against the
per-prefix table queries, and a user-written Proposal driving SMC unbiasedly."""

from __future__ import annotations

import math

import pytest
import torch

import bayes_rlhf as br
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.samplers import SMC, SMCConfig, smc
from bayes_rlhf.samplers.proposals import (ExactProposal, LMProposal, PriorProposal, Proposal, Proposed,
                                           TwistedProposal, as_proposal)

PROMPT = "w1 w2"


def test_every_form_is_converted_once(mild_target, mild_post, other_policy):
    prompts = [PROMPT]
    assert isinstance(as_proposal(None, mild_target, prompts), PriorProposal)
    assert isinstance(as_proposal(mild_target.prior, mild_target, prompts), PriorProposal)
    assert isinstance(as_proposal("twisted", mild_target, prompts), TwistedProposal)
    lm = as_proposal(other_policy, mild_target, prompts)
    assert isinstance(lm, LMProposal) and lm.lm is other_policy
    for form in (mild_post, [mild_post], {PROMPT: mild_post}):
        assert isinstance(as_proposal(form, mild_target, prompts), ExactProposal)
    custom = TemperedPrior(0.5)
    assert as_proposal(custom, mild_target, prompts) is custom
    assert all(isinstance(p, Proposal) for p in (PriorProposal(), custom, lm))
    with pytest.raises(ConfigError, match="Proposal"):
        as_proposal(object(), mild_target, prompts)
    with pytest.raises(ConfigError, match="not known"):
        as_proposal("optimal", mild_target, prompts)
    with pytest.raises(ConfigError, match="no ExactPosterior for prompt"):
        as_proposal(mild_post, mild_target, ["w3"])


def test_exact_proposal_matches_the_table_prefix_by_prefix(mild_target, mild_post):
    # The vectorised proposal (one pass over the distinct blocks of a step) gives every live
    # particle exactly ExactPosterior.token_posterior of its prefix, and its blocks are prefix_range.
    algo = SMC(mild_target, [PROMPT, "w3"], SMCConfig(6, ess_threshold=1.0), proposal=[mild_post,
               br.exact_posterior(mild_target, "w3")], twist=br.PrefixPotential(mild_target.reward))
    posts = algo.proposal.tables
    g = torch.Generator().manual_seed(3)
    state, checked = algo.init(), 0
    for _ in range(mild_target.max_new_tokens - 1):
        live = torch.nonzero(state.alive).squeeze(-1)
        view = algo_view(algo, state, live)
        out = algo.proposal.log_probs(state.q_state, view)
        for j, i in enumerate(live.tolist()):
            post, prefix = posts[i // 6], state.ids[i, : state.t].tolist()
            assert (int(state.q_state.lo[i]), int(state.q_state.hi[i])) == post.prefix_range(prefix)
            assert torch.equal(out.log_q[j], post.token_posterior(prefix, log=True))
            checked += 1
        state, _ = algo.step(state, generator=g)
        if not state.alive.any():
            break
    assert checked > 20


def algo_view(algo, state, live):
    from bayes_rlhf.samplers.proposals import StepView

    return StepView(state.t, live, state.ids, state.rows.logp(live).double(), state.rows, algo.row_prompts,
                    algo.potentials)


class TemperedPrior:
    """A user-written proposal: q ∝ pi0^tau over the prior's support (no model of its own, no state)."""

    lm = None
    lookahead = False

    def __init__(self, tau: float):
        self.tau = tau

    def start(self, num_particles):
        return None

    def log_probs(self, state, view):
        return Proposed(torch.log_softmax(self.tau * view.prior_logp, -1))

    def advance(self, state, view, tokens, proposed):
        return None

    def reindex(self, state, idx):
        return None


def test_a_user_proposal_gives_unbiased_log_z(mild_target, mild_post):
    # E[exp(log_z)] = Z: the mean of exp(log_z - log Z) over R = 200 runs of N = 8 is 1 within
    # 3 standard errors of the runs (the same criterion as the built-in proposals' tests).
    R = 200
    ws = smc(mild_target, [PROMPT] * R, 8, proposal=TemperedPrior(0.5), twist=br.PrefixPotential(mild_target.reward),
             ess_threshold=1.0, generator=torch.Generator().manual_seed(12))
    z = torch.exp(ws.log_z - mild_post.log_z)
    se = float(z.std() / math.sqrt(R))
    assert se < 0.1 and abs(float(z.mean()) - 1.0) < 3 * se
    assert int(ws.history.num_resampling_steps.sum()) > 0


def test_a_posterior_without_its_model_proposes(mild_target, mild_post):
    # a table read back from a run directory holds only its Vocabulary (lm None): enough to propose
    import dataclasses

    bare = dataclasses.replace(mild_post, lm=None)
    assert bare.lm is None
    a = smc(mild_target, PROMPT, 8, proposal=bare, twist=mild_post, generator=torch.Generator().manual_seed(1))
    b = smc(mild_target, PROMPT, 8, proposal=mild_post, twist=mild_post, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.ids, b.ids) and torch.equal(a.log_z, b.log_z)
