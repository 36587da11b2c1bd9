"""The LM head applied in row tiles: per-token log-probs of chosen tokens without [n, T, V] tensors.

Scoring needs one number per position, ``log softmax(h W^T)[y] = (h W^T)[y] - logsumexp(h W^T)``,
yet the plain path keeps the logits, their log_softmax and, under grad, a scattered [n, T, V]
gradient. ``chosen_log_probs(hidden, weight, ids)`` instead runs the head on tiles of rows::

    for each tile of rows r:     z = h_r W^T                 # [rows, V], >= float32
                                 lp_r = z[y_r] - logsumexp(z)
                                 under grad keep p_r = softmax(z) (one [rows, V] tensor per tile)
    backward (g: d loss / d lp): dz = g * (onehot(y) - p)
                                 dh_r = dz W;   dW += dz^T h_r

Without grad nothing beyond one tile is held (``TILE_ELEMENTS`` logits); under grad the softmax is
kept once instead of the logits, their log_softmax and a scattered gradient, and nothing is
recomputed in the backward. ``head_of(model)`` returns the backbone and the head weight when the
model's logits are exactly ``head(last hidden state)`` (checked once per model on two tokens, so a
head with a bias, a scale or a soft cap keeps the plain path), else None.
"""

from __future__ import annotations

import weakref

import torch

TILE_ELEMENTS = 1 << 24  # logits per tile (64 MB in float32)

_HEADS: "weakref.WeakKeyDictionary[torch.nn.Module, bool]" = weakref.WeakKeyDictionary()


class _ChosenLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, ids, rows):
        keep = any(ctx.needs_input_grad[:2])
        out_dtype = torch.promote_types(hidden.dtype, torch.float32)
        out = torch.empty(hidden.shape[0], dtype=out_dtype, device=hidden.device)
        probs = []
        for s in range(0, hidden.shape[0], rows):
            z = torch.matmul(hidden[s: s + rows], weight.t()).to(out_dtype)
            lse = torch.logsumexp(z, dim=-1, keepdim=True)
            out[s: s + rows] = z.gather(-1, ids[s: s + rows, None]).squeeze(-1) - lse.squeeze(-1)
            if keep:
                probs.append(z.sub_(lse).exp_())
        if keep:
            ctx.save_for_backward(hidden, weight, ids)
            ctx.probs, ctx.rows = probs, rows
        return out

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, ids = ctx.saved_tensors
        rows = ctx.rows
        d_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        d_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        for i, s in enumerate(range(0, hidden.shape[0], rows)):
            g = grad[s: s + rows, None]
            dz = ctx.probs[i] * -g                       # a new tensor: a second backward sees p unchanged
            dz.scatter_add_(-1, ids[s: s + rows, None], g)
            dz = dz.to(hidden.dtype)
            if d_hidden is not None:
                d_hidden[s: s + rows] = torch.matmul(dz, weight)
            if d_weight is not None:
                d_weight.addmm_(dz.t(), hidden[s: s + rows])
        return d_hidden, d_weight, None, None


def chosen_log_probs(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor,
                     tile_elements: int = TILE_ELEMENTS) -> torch.Tensor:
    """``log_softmax(hidden @ weight.T)`` at ``ids``, in row tiles, differentiable in both tensors.

    Parameters
    ----------
    hidden : Tensor [..., H]
        Last hidden states (after the final norm).
    weight : Tensor [V, H]
        The LM head's weight (no bias).
    ids : LongTensor [...]
        The token whose log-prob each position returns.

    Returns
    -------
    Tensor [...] in the promotion of ``hidden``'s dtype and float32.
    """
    shape = ids.shape
    flat = hidden.reshape(-1, hidden.shape[-1])
    rows = max(1, tile_elements // weight.shape[0])
    return _ChosenLogProbs.apply(flat, weight, ids.reshape(-1), rows).view(shape)


def _inner(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside peft wrappers."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose ``last_hidden_state`` the head reads (``model.base_model`` in transformers)."""
    return _inner(model).base_model


def head_of(model: torch.nn.Module) -> torch.Tensor | None:
    """The head weight [V, H] when ``model``'s logits are ``last_hidden_state @ weight.T`` exactly
    (checked once per model; a bias, scale, soft cap or untested architecture gives None)."""
    inner = _inner(model)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear or head.bias is not None:
        return None
    body = getattr(inner, "base_model", None)
    if body is None or body is inner:
        return None
    if model not in _HEADS:
        _HEADS[model] = _same_logits(model, body, head.weight)
    return head.weight if _HEADS[model] else None


def _same_logits(model, body, weight) -> bool:
    ids = torch.tensor([[0, min(1, weight.shape[0] - 1)]], device=weight.device)
    att = torch.ones_like(ids)  # id 0 may be the pad id: without a mask transformers warns
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=att, use_cache=False).logits
            hidden = body(input_ids=ids, attention_mask=att, use_cache=False).last_hidden_state
            mine = torch.matmul(hidden, weight.t())
    finally:
        model.train(was_training)
    return mine.shape == logits.shape and torch.allclose(mine.float(), logits.float(), rtol=1e-5, atol=1e-5)
