"""Per-token log-probs of given completions: the pass behind ``CausalLM.sequence_forward`` and ``score``.

    distinct prompts once (left-padded);  row i continues prompt index[i]
    plain head    logits [n, T, V] (completion_logits) -> log_softmax (top-k, support mask) -> gather
    tiled head    last hidden [n, T, H] (window_hidden) -> chosen_log_probs: the head in row tiles,
                  no [n, T, V] tensor (an untruncated model whose logits are head(hidden), see lm_head)

The tiled head runs the prompt once through a KV cache without grad and one pass over the
concatenated rows under grad (see ``passes``); both paths give the same log-probs up to rounding.
(With LoRA the cached pass under grad measured the same as one pass: 0.6 s forward, 0.55 s backward.)
A wrapped module (``model=``, e.g. DDP) is called once per backward over the concatenated rows.
"""

from __future__ import annotations

from typing import Sequence

import torch

from bayes_rlhf.models.lm_head import backbone, chosen_log_probs, head_of
from bayes_rlhf.models.passes import completion_logits, full_logits, window_hidden


def sequence_forward(lm, prompts: str | Sequence[str], ids: torch.Tensor, mask: torch.Tensor, *,
                     model: torch.nn.Module | None = None, hidden_states: bool = False):
    """Per-token log-probs [n, T] (0 at padding) and, with ``hidden_states``, the last hidden state
    at the positions that predict each completion token [n, T, H] (else None); see
    ``CausalLM.sequence_forward``."""
    n, T = ids.shape
    plist = lm._as_prompt_list(prompts)
    if len(plist) == 1 and n != 1:
        plist = plist * n
    distinct = {p: i for i, p in enumerate(dict.fromkeys(plist))}
    index = torch.tensor([distinct[p] for p in plist], dtype=torch.long, device=lm.device)
    p_ids, p_att = lm._prompt_batch(list(distinct))
    ids, mask = ids.to(lm.device), mask.to(lm.device)
    net = lm.model if model is None else model
    weight = head_of(net) if net is lm.model and lm.top_k is None and lm.support is None else None
    if weight is not None:
        hidden = window_hidden(backbone(net), p_ids, p_att, index, ids, mask, cached=not torch.is_grad_enabled())
        tok = chosen_log_probs(hidden, weight, ids).masked_fill(~mask, 0.0)
        return tok, (hidden if hidden_states else None)
    # each distinct prompt once (a cached prompt pass), unless a wrapper must be called once per backward
    run = completion_logits if net is lm.model else full_logits
    logits, hidden = run(net, p_ids, p_att, index, ids, mask, hidden_states)
    support_lp = None
    if lm.support is not None:
        with torch.no_grad():
            s_logits, _ = completion_logits(lm.support.model, p_ids, p_att, index, ids, mask)
        support_lp = lm.support.log_softmax(s_logits)
    logp = lm.log_softmax(logits, support_lp)
    tok = logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1).masked_fill(~mask, 0.0)
    return tok, hidden

