"""A learned twist: a GRU over token ids predicting the soft value V_t / beta, and its exact fit.

``LearnedTwist`` maps (prompt + prefix) ids to log psi_t; it is a ``Twist`` (``twists.py``) for
``smc(twist=...)``. Two ways to fit it: ``fit_twist`` here, by weighted least squares on the exact
soft values of enumerated posteriors, and contrastive twist learning from samples alone
(``twist_learning.fit_twist_ctl``)::

    prefixes, V / beta, mass = exact_prefix_values(post)     # every unfinished prefix of the table
    repeat: pick prefixes by (prior + posterior mass) / 2
            loss = mean (twist(prompt + prefix) - V / beta)^2;  Adam step
"""

from __future__ import annotations

import math

import torch
from torch import nn
from tqdm.auto import tqdm

from bayes_rlhf._checks import check_generator, is_integer, is_real
from bayes_rlhf.errors import ConfigError
from bayes_rlhf.exact.posterior import ExactPosterior
from bayes_rlhf.samplers.twists import posterior_table


class LearnedTwist(nn.Module):
    """A GRU over (prompt + prefix) token ids predicting V_t / beta; a learned twist.

    Parameters
    ----------
    vocab_size : int
    hidden : int
        Embedding and GRU width.
    """

    def __init__(self, vocab_size: int, hidden: int = 64):
        super().__init__()
        if not (is_integer(vocab_size) and is_integer(hidden)) or vocab_size < 2 or hidden < 1:
            raise ConfigError(f"LearnedTwist needs vocab_size >= 2 and hidden >= 1, got {vocab_size}, {hidden}")
        vocab_size, hidden = int(vocab_size), int(hidden)
        self.embed = nn.Embedding(vocab_size, hidden)
        self.rnn = nn.GRU(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """seqs LongTensor [n, L] (prompt + prefix, left-aligned, all real) -> Tensor [n]."""
        return self.all_positions(seqs)[:, -1]

    def all_positions(self, seqs: torch.Tensor) -> torch.Tensor:
        """seqs LongTensor [n, L] -> Tensor [n, L]: column j is the prediction for seqs[:, : j + 1].

        The GRU is causal, so one pass gives the value of every prefix of every row.
        """
        out, _ = self.rnn(self.embed(seqs))
        return self.head(out).squeeze(-1)

    def prefix_log_potentials(self, prompt_ids: list[list[int]], ids: torch.Tensor) -> torch.Tensor:
        """log psi_t of every prefix in one GRU pass: Tensor [n, T], column t - 1 = log psi_t(x_{1:t}).

        Parameters
        ----------
        prompt_ids : list of n lists of int
            Each row's prompt as token ids (``prior.encode_prompt``).
        ids : LongTensor [n, T]
            Completions; columns after a row's end (pad, or -1) only affect columns after it.

        Returns
        -------
        Tensor [n, T] on the twist's device, differentiable. Rows whose prompts have the same
        length are batched together (no padding inside the prompt).
        """
        n, T = ids.shape
        tail = ids.clamp(min=0).to(self.device)  # causal: what follows a prefix cannot change its value
        lengths = torch.tensor([len(p) for p in prompt_ids])
        out = torch.empty((n, T), device=self.device, dtype=self.head.weight.dtype)
        for L in lengths.unique().tolist():
            rows = torch.nonzero(lengths == L).squeeze(-1)
            head = torch.tensor([prompt_ids[i] for i in rows.tolist()], dtype=torch.long).reshape(rows.numel(), L)
            seqs = torch.cat([head.to(self.device), tail[rows.to(self.device)]], 1)
            out = out.index_put((rows.to(self.device),), self.all_positions(seqs)[:, L:])
        return out

    def _sequences(self, prompt_ids: list[list[int]], ids: torch.Tensor) -> list[torch.Tensor]:
        return [torch.tensor(p + r, dtype=torch.long) for p, r in zip(prompt_ids, ids.tolist())]

    def predict(self, prompt_ids: list[list[int]], ids: torch.Tensor) -> torch.Tensor:
        """Predicted V_t / beta [n] for prompts (as ids) and prefixes ids [n, t] (differentiable)."""
        seqs = self._sequences(prompt_ids, ids)
        lengths = torch.tensor([len(s) for s in seqs])
        out = torch.empty(len(seqs), device=self.device, dtype=self.head.weight.dtype)
        for L in lengths.unique().tolist():  # equal lengths batch together: no padding needed
            rows = torch.nonzero(lengths == L).squeeze(-1)
            out = out.index_put((rows.to(self.device),), self(torch.stack([seqs[i] for i in rows]).to(self.device)))
        return out

    def log_potential(self, prompts: list[str], ids: torch.Tensor, target) -> torch.Tensor:
        """log psi_t [n] (float64, CPU). Rows that differ only in their last token (the twisted
        proposal's candidates) share one GRU pass over their common prefix, then one step each."""
        encoded = {p: target.prior.encode_prompt(p) for p in set(prompts)}
        seqs = self._sequences([encoded[p] for p in prompts], ids)
        lengths = torch.tensor([len(s) for s in seqs])
        out = torch.empty(len(seqs), dtype=torch.float64)
        with torch.no_grad():
            for L in lengths.unique().tolist():
                rows = torch.nonzero(lengths == L).squeeze(-1)
                batch = torch.stack([seqs[i] for i in rows.tolist()]).to(self.device)
                if L < 2:
                    out[rows] = self(batch).double().cpu()
                    continue
                heads, inv = torch.unique(batch[:, :-1], dim=0, return_inverse=True)
                _, h = self.rnn(self.embed(heads))                          # h [1, U, H]
                last, _ = self.rnn(self.embed(batch[:, -1:]), h[:, inv])    # one step per row
                out[rows] = self.head(last[:, -1]).squeeze(-1).double().cpu()
        return out


def exact_prefix_values(posterior: ExactPosterior) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every unfinished prefix of the table with V / beta and its prior and posterior mass.

    Returns (ids LongTensor [M, T] padded with -1, lengths [M], log_values [M], weights [M]);
    weights = (prior mass + posterior mass) / 2 of reaching the prefix. Uses the sorted table:
    the completions extending a prefix form one contiguous block.
    """
    ids, mask = posterior.completion_ids, posterior.mask
    lp0, lpost = posterior.prior_log_probs, posterior.log_probs
    lw = lp0 + posterior.rewards / posterior.beta
    out_ids, out_len, out_v, out_w = [], [], [], []
    T = ids.shape[1]
    for t in range(T):
        rows = torch.nonzero(mask[:, t]).squeeze(-1)  # completions longer than t: prefix of length t unfinished
        keys = ids[rows, :t] if t else torch.zeros((rows.numel(), 1), dtype=torch.long)
        _, inv = torch.unique_consecutive(keys, dim=0, return_inverse=True)
        M = int(inv.max()) + 1

        def seg_lse(x):
            m = torch.full((M,), -math.inf, dtype=torch.float64).scatter_reduce(0, inv, x, "amax")
            ms = torch.where(torch.isfinite(m), m, 0.0)
            return torch.log(torch.zeros(M, dtype=torch.float64).index_add_(0, inv, torch.exp(x - ms[inv]))) + ms

        first = torch.zeros(M, dtype=torch.long).scatter_reduce(0, inv, torch.arange(rows.numel()), "amin",
                                                                  include_self=False)
        pref = torch.full((M, T), -1, dtype=torch.long)
        pref[:, :t] = ids[rows[first], :t]
        out_ids.append(pref)
        out_len.append(torch.full((M,), t, dtype=torch.long))
        out_v.append(seg_lse(lw[rows]) - seg_lse(lp0[rows]))
        out_w.append(0.5 * (seg_lse(lp0[rows]).exp() + seg_lse(lpost[rows]).exp()))
    return torch.cat(out_ids), torch.cat(out_len), torch.cat(out_v), torch.cat(out_w)


def fit_twist(twist: LearnedTwist, posteriors, *, steps: int = 300, lr: float = 1e-2, batch_size: int = 256,
              generator: torch.Generator | None = None, progress: bool = False) -> list[float]:
    """Fit ``twist`` to exact soft values V_t / beta by weighted least squares.

    Prefixes come from every table (``exact_prefix_values``), sampled by prior+posterior mass;
    prefixes whose soft value is -inf are left out. Prompts are encoded by each posterior's
    ``vocabulary``, so tables read back without their model (``load_run``) fit as well. Returns the
    loss per step.
    """
    table = posterior_table(posteriors)
    if not (is_integer(steps) and steps >= 1 and is_real(lr) and math.isfinite(lr) and lr > 0
            and is_integer(batch_size) and batch_size >= 1):
        raise ConfigError(f"fit_twist needs integers steps >= 1 and batch_size >= 1 and a finite lr > 0; got "
                          f"{steps!r}, {lr!r}, {batch_size!r}")
    steps, lr, batch_size = int(steps), float(lr), int(batch_size)
    check_generator(generator)
    data = []
    for post in table.values():
        pids, plen, v, w = exact_prefix_values(post)
        keep = torch.isfinite(v)
        data.append((post.vocabulary.encode_prompt(post.prompt), pids[keep], plen[keep], v[keep], w[keep]))
    weights = torch.cat([d[4] for d in data])
    owner = torch.cat([torch.full((d[1].shape[0],), i) for i, d in enumerate(data)])
    local = torch.cat([torch.arange(d[1].shape[0]) for d in data])
    opt = torch.optim.Adam(twist.parameters(), lr=lr)
    losses = []
    for _ in tqdm(range(steps), desc="fitting twist", disable=not progress):
        pick = torch.multinomial(weights, batch_size, replacement=True, generator=generator)
        prompt_ids, targets = [], []
        for j in pick.tolist():
            d = data[owner[j]]
            k = local[j]
            prompt_ids.append(d[0] + d[1][k, : d[2][k]].tolist())
            targets.append(d[3][k])
        pred = twist.predict(prompt_ids, torch.zeros((len(pick), 0), dtype=torch.long))
        loss = ((pred.double().cpu() - torch.stack(targets)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses
