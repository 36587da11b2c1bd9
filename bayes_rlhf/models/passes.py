"""Forward passes over prompt + completion that do each prompt's work once.

``completion_logits`` is what scoring and the training forward run::

    prompt pass      the m distinct prompts (left-padded), with a KV cache: logits and last hidden
                     state at each prompt's last position (they predict completion token 1)
    cache            rows ``index`` of the prompt cache (one per completion; repeats allowed)
    completion pass  tokens 1..T-1 of every completion over that cache: the logits that predict
                     tokens 2..T (token T is never an input: nothing it predicts is scored)

n completions of one prompt cost P + n (T - 1) positions instead of n (P + T); gradients flow
through the cache into the prompt pass, so the result (values and gradients) is that of one pass
over the concatenated sequences, up to floating-point rounding.

``window_hidden`` is the same pair of passes through the backbone alone (no head): the last hidden
state at those positions, for ``lm_head.chosen_log_probs``. ``cached=False`` runs one pass over the
concatenated rows instead; under grad that is the faster one (measured on SmolLM2-135M, 8 x 16
tokens, one thread: backward 1.2 s against 1.5 s), since with two passes every weight receives two
gradients that autograd adds, and a tied embedding two dense [V, H] embedding gradients.
"""

from __future__ import annotations


import torch

from bayes_rlhf.models.cache import _forward_facts, _select_cache, cache_argument

def _takes_logits_to_keep(model) -> bool:
    """Whether ``model``'s forward (through peft / DDP wrappers) takes ``logits_to_keep``."""
    return _forward_facts(model)[1]


def completion_logits(model, p_ids: torch.Tensor, p_att: torch.Tensor, index: torch.Tensor, ids: torch.Tensor,
                      mask: torch.Tensor, hidden_states: bool = False):
    """Logits [n, T, V] at the positions that predict each completion token, and with
    ``hidden_states`` the last hidden state there [n, T, H] (else None).

    Parameters
    ----------
    model : transformers causal LM (not a DDP wrapper: it is called twice per backward)
    p_ids, p_att : LongTensor [m, P]
        The distinct prompts, left-padded, and their attention mask.
    index : LongTensor [n]
        The prompt of each completion (a row of ``p_ids``).
    ids, mask : Tensor [n, T]
        Completions, right-padded, and their mask.
    """
    n, T = ids.shape
    keep = {"logits_to_keep": 1} if _takes_logits_to_keep(model) else {}
    pos = (p_att.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=p_ids, attention_mask=p_att, position_ids=pos, use_cache=True,
                output_hidden_states=hidden_states, **keep)
    logits = out.logits[:, -1:][index]                       # [n, 1, V]
    hidden = out.hidden_states[-1][:, -1:][index] if hidden_states else None
    if T > 1:
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        cache = _select_cache(cache, index)
        att = torch.cat([p_att[index], mask[:, : T - 1].long()], dim=1)
        c_pos = pos[index, -1:] + 1 + torch.arange(T - 1, device=ids.device)
        rest = model(input_ids=ids[:, : T - 1], attention_mask=att, position_ids=c_pos, use_cache=True,
                     output_hidden_states=hidden_states, **{cache_argument(model): cache})
        logits = torch.cat([logits, rest.logits], dim=1)
        if hidden_states:
            hidden = torch.cat([hidden, rest.hidden_states[-1]], dim=1)
    return logits, hidden


def full_logits(model, p_ids: torch.Tensor, p_att: torch.Tensor, index: torch.Tensor, ids: torch.Tensor,
                mask: torch.Tensor, hidden_states: bool = False):
    """``completion_logits`` in one pass over the concatenated rows (for a wrapped module, e.g. DDP,
    that must be called once per backward)."""
    T = ids.shape[1]
    full = torch.cat([p_ids[index], ids], dim=1)
    att = torch.cat([p_att[index], mask.long()], dim=1)
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=full, attention_mask=att, position_ids=pos, use_cache=False,
                output_hidden_states=hidden_states)
    window = slice(p_ids.shape[1] - 1, p_ids.shape[1] - 1 + T)
    return out.logits[:, window], (out.hidden_states[-1][:, window] if hidden_states else None)


def window_hidden(body, p_ids: torch.Tensor, p_att: torch.Tensor, index: torch.Tensor, ids: torch.Tensor,
                  mask: torch.Tensor, cached: bool = True) -> torch.Tensor:
    """The backbone's last hidden state [n, T, H] at the positions that predict each completion
    token (``body``: e.g. ``LlamaModel``, whose output has ``last_hidden_state``); arguments as in
    ``completion_logits``. ``cached``: the prompt pass once with a KV cache (else one pass)."""
    n, T = ids.shape
    if not cached:
        full = torch.cat([p_ids[index], ids], dim=1)
        att = torch.cat([p_att[index], mask.long()], dim=1)
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        out = body(input_ids=full, attention_mask=att, position_ids=pos, use_cache=False)
        return out.last_hidden_state[:, p_ids.shape[1] - 1: p_ids.shape[1] - 1 + T]
    pos = (p_att.cumsum(-1) - 1).clamp(min=0)
    out = body(input_ids=p_ids, attention_mask=p_att, position_ids=pos, use_cache=T > 1)
    hidden = out.last_hidden_state[:, -1:][index]            # [n, 1, H]
    if T > 1:
        cache = _select_cache(out["cache"] if "cache" in out else out["past_key_values"], index)
        att = torch.cat([p_att[index], mask[:, : T - 1].long()], dim=1)
        c_pos = pos[index, -1:] + 1 + torch.arange(T - 1, device=ids.device)
        rest = body(input_ids=ids[:, : T - 1], attention_mask=att, position_ids=c_pos, use_cache=True,
                    **{cache_argument(body): cache})
        hidden = torch.cat([hidden, rest.last_hidden_state], dim=1)
    return hidden
