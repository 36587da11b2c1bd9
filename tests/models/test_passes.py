"""The cached prompt pass (``completion_logits``) against one pass over the concatenated rows."""

from __future__ import annotations

import pytest
import torch

from bayes_rlhf.models.passes import completion_logits, full_logits
from bayes_rlhf.models.toy import tiny_lm


def _batch(lm, prompts, rows, T, seed):
    distinct = list(dict.fromkeys(prompts))
    p_ids, p_att = lm._prompt_batch(distinct)
    index = torch.tensor([distinct.index(p) for p in rows])
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, lm.vocab_size, (len(rows), T), generator=g)
    lengths = torch.randint(1, T + 1, (len(rows),), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    return p_ids, p_att, index, ids.masked_fill(~mask, lm.pad_id), mask


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("T", [1, 4])
def test_cached_prompt_pass_equals_full_pass_with_gradients(arch, T):
    lm = tiny_lm(arch, vocab_size=8, seed=3)
    prompts = ["w1", "w2 w3 w1", "w4 w4"]  # different lengths: left padding in the prompt pass
    rows = ["w2 w3 w1", "w1", "w2 w3 w1", "w4 w4", "w1", "w1"]
    p_ids, p_att, index, ids, mask = _batch(lm, prompts, rows, T, seed=T)
    results = []
    for run in (completion_logits, full_logits):
        lm.model.zero_grad(set_to_none=True)
        logits, hidden = run(lm.model, p_ids, p_att, index, ids, mask, hidden_states=True)
        assert logits.shape == (len(rows), T, lm.vocab_size) and hidden.shape[:2] == (len(rows), T)
        lp = torch.log_softmax(logits, -1).gather(-1, ids[..., None]).squeeze(-1).masked_fill(~mask, 0.0)
        (lp.sum() + hidden.masked_fill(~mask[..., None], 0.0).square().sum()).backward()
        grads = [p.grad.clone() for p in lm.model.parameters() if p.grad is not None]
        results.append((lp.detach(), hidden[mask].detach(), grads))
    (lp_c, h_c, g_c), (lp_f, h_f, g_f) = results
    # float64 models: the two passes differ by reassociation only (about 1e-15)
    torch.testing.assert_close(lp_c, lp_f, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(h_c, h_f, atol=1e-10, rtol=1e-10)
    assert len(g_c) == len(g_f) > 0
    # Llama's RMSNorm computes in float32 even in a float64 model, and its backward rounds gradients
    # to float32: one prompt row repeated sums differently from n rows, at float32 precision (~1e-7)
    tol = 1e-9 if arch == "gpt2" else 1e-5
    for a, b in zip(g_c, g_f):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)
