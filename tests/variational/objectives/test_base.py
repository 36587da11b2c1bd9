"""The objectives' shared pieces (``objectives/base.py``): the weighted NLL of distillation and DPG on a
prompt without mass, and what an objective record declares to the loop (the losses' values by hand are in
test_grpo.py and their gradients against enumeration in tests/variational/test_gradients.py)."""

from __future__ import annotations

import math

import pytest
import torch

from bayes_rlhf.variational import TrainerConfig
from bayes_rlhf.variational.objectives import PolicyBatch, distill_loss, dpg_loss


def _batch(log_weights=None, rewards=None):
    lq = torch.zeros(4, 2, dtype=torch.float64, requires_grad=True)
    return PolicyBatch(logq=lq - torch.tensor([[1.0, 0.0], [0.5, 0.5], [2.0, 0.0], [0.0, 3.0]], dtype=torch.float64),
                       old_logq=torch.full((4, 2), -0.5, dtype=torch.float64),
                       prior_logp=torch.full((4, 2), -0.7, dtype=torch.float64),
                       mask=torch.ones(4, 2, dtype=torch.bool),
                       rewards=torch.zeros(4, dtype=torch.float64) if rewards is None else rewards,
                       group=torch.tensor([0, 0, 1, 1]), beta=0.5, log_weights=log_weights,
                       proposal_log_probs=torch.full((4,), -1.0, dtype=torch.float64))


def test_a_prompt_without_mass_adds_nothing_to_the_weighted_losses():
    # prompt 1's two samples have weight 0 (a hard constraint rejected both): its share of the loss
    # is 0, prompt 0's is its weighted NLL (weights 1/(1+e), e/(1+e) on sequence NLLs 1 and 1), /2 prompts
    out = distill_loss(_batch(torch.tensor([0.0, 1.0, -math.inf, -math.inf], dtype=torch.float64)), TrainerConfig())
    assert float(out.loss.detach()) == pytest.approx(1.0 / 2, rel=1e-14)
    assert out.stats["ess"] == pytest.approx((1 / ((1 / (1 + math.e)) ** 2 + (math.e / (1 + math.e)) ** 2)) / 2,
                                             rel=1e-12)  # ESS 0 for the prompt with no mass
    # DPG with rewards -inf on both of prompt 1's samples: a finite loss, no gradient on those rows
    b = _batch(rewards=torch.tensor([1.0, 0.0, -math.inf, -math.inf], dtype=torch.float64))
    dpg = dpg_loss(b, TrainerConfig())
    (grad,) = torch.autograd.grad(dpg.loss, b.logq)
    assert math.isfinite(float(dpg.loss.detach())) and bool((grad[2:] == 0).all()) and bool((grad[:2] != 0).all())


# ----------------------------------------------------------------------------- the records
def test_each_record_declares_what_the_loop_needs():
    def bound(**kw):
        return TrainerConfig(**kw).bound_objective()

    rloo, ppo, grpo = bound(objective="rloo"), bound(objective="ppo", ppo_epochs=3), bound(objective="grpo")
    assert (rloo.source.kind, rloo.inner_epochs, rloo.value_head, rloo.learns_log_z) == ("policy", 1, False, False)
    assert (ppo.inner_epochs, ppo.value_head_lr, ppo.on_policy) == (3, 1e-2, True)
    assert grpo.inner_epochs == 1 and bound(objective="grpo", grpo_epochs=2).inner_epochs == 2
    assert bound(objective="dpg").on_policy and bound(objective="dpg", dpg_proposal="prior").source.kind == "prior"
    rej = bound(objective="distill", distill_source="rejection", reward_max=3.0).source
    assert (rej.kind, rej.reward_max, rej.on_policy) == ("rejection", 3.0, False)
    assert bound(objective="vargrad").log_z_lr == 0.05 and not bound(objective="vargrad", log_z="batch").learns_log_z
    assert TrainerConfig(objective="ppo").lr == 3e-4 and TrainerConfig(objective="dpg").lr == 1e-3
