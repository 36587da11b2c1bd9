"""Preference pairs for DPO and IPO: the ``Preferences`` table, pairs labelled by a Bradley-Terry
model of a target's reward, and the exact population answers these objectives converge to.

Pairs (a, b) are drawn from a pair law s (pi0 for ``sample_preferences``, the policy itself for
online DPO) and a is chosen with probability P(a > b), the judge's label probability::

    bradley_terry   P(a > b) = sigmoid((r_a - r_b) / temperature)
    better          P(a > b) = 1[r_a > r_b] + 1[r_a = r_b] / 2        (prefer the higher reward)

With u = log q / pi0 and Delta = u_chosen - u_rejected, the population losses are::

    DPO  L(q) = E_{a,b ~ s} [P(a>b) l(Delta_ab) + P(b>a) l(-Delta_ab)],  l(D) = -log sigmoid(beta D)
    IPO  L(q) = E_{a,b ~ s} [P(a>b) (Delta_ab - 1/(2 tau))^2 + P(b>a) (Delta_ab + 1/(2 tau))^2]

and, where s covers the whole space, their minimisers over every q are (``*_fixed_point``)::

    DPO   beta Delta_ab = logit P(a > b) = (r_a - r_b) / temperature  =>  q = pi0 exp(r / (beta temperature)) / Z
          (pi* itself at temperature 1, the Bradley-Terry model of the reward in its own units)
    IPO   sum_b s(b) (Delta_ab - (2 P(a>b) - 1) / (2 tau)) = 0       =>  q(a) ~ pi0(a) exp(w(a) / tau),
          w(a) = E_{b ~ pi0} P(a > b), the win rate against pi0 (Azar et al. 2023), s = pi0 x pi0
    online DPO (s = q x q, gradient through the loss only): stationary where, for every a with
          q(a) > 0, E_{b ~ q} sigmoid(beta Delta_ab) = E_{b ~ q} P(a > b). The Bradley-Terry judge at
          temperature 1 is solved by pi*, its only fixed point of full support; the "better" judge has
          none at finite u (sigmoid < 1 against a strictly worse b), so q tends to pi0 restricted to the
          completions of highest reward, each shared in pi0's proportions (ties have P = 1/2).

The exact answers read an ``ExactPosterior`` (pi0's log-probs and the rewards of every completion).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from bayes_rlhf._checks import check_generator, check_int, check_real
from bayes_rlhf.errors import ConfigError, PromptError, TokenizerMismatchError
from bayes_rlhf.logweights import group_sum, normalized_log_weights
from bayes_rlhf.models.text import encode_known

JUDGES = ("bradley_terry", "better")
#: the most completions ``exact_preference_loss`` takes (it holds K x K tables)
MAX_PAIR_TABLE = 4096


@dataclass(frozen=True)
class Preferences:
    """Preference pairs as token ids: in pair i, ``chosen`` is preferred to ``rejected`` after ``prompts[i]``.

    Attributes
    ----------
    prompts : tuple of str [m]
    chosen_ids, rejected_ids : LongTensor [m, T]
        Completion tokens (ending at EOS, or at T), padded with the model's pad id.
    chosen_mask, rejected_mask : BoolTensor [m, T]
    """

    prompts: tuple
    chosen_ids: torch.Tensor
    chosen_mask: torch.Tensor
    rejected_ids: torch.Tensor
    rejected_mask: torch.Tensor

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def max_new_tokens(self) -> int:
        return self.chosen_ids.shape[1]

    def rows_of(self, prompt: str) -> torch.Tensor:
        """Indices (LongTensor) of the pairs of ``prompt``."""
        return torch.tensor([i for i, p in enumerate(self.prompts) if p == prompt], dtype=torch.long)

    def triples(self, lm) -> list[tuple[str, str, str]]:
        """(prompt, chosen, rejected) texts, decoded by ``lm`` (EOS dropped: the ids are the exact pairs)."""
        return list(zip(self.prompts, lm.decode(self.chosen_ids, self.chosen_mask),
                        lm.decode(self.rejected_ids, self.rejected_mask)))

    def fingerprint(self) -> str:
        """A short hash of the pairs (a run resumes only on the same preferences)."""
        h = hashlib.sha256("\x00".join(self.prompts).encode())
        for t in (self.chosen_ids, self.chosen_mask, self.rejected_ids, self.rejected_mask):
            h.update(t.cpu().numpy().tobytes())
        return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- labels
def label_probabilities(r_a: torch.Tensor, r_b: torch.Tensor, judge: str = "bradley_terry",
                        temperature: float = 1.0) -> torch.Tensor:
    """P(a > b) for rewards r_a, r_b (broadcast): the judge's probability of choosing a (module docstring)."""
    if judge == "bradley_terry":
        return torch.sigmoid((r_a - r_b) / temperature)
    if judge == "better":
        return (r_a > r_b).to(r_a.dtype) + 0.5 * (r_a == r_b).to(r_a.dtype)
    raise ConfigError(f"judge must be one of {list(JUDGES)}, got {judge!r}")


def sample_preferences(target, prompts: str | Sequence[str], num_pairs: int, *, generator: torch.Generator,
                       temperature: float = 1.0) -> Preferences:
    """Pairs of pi0's samples labelled by a Bradley-Terry model of ``target``'s reward.

    Per prompt, ``num_pairs`` pairs (a, b) of independent draws of ``target.prior``; a is chosen with
    probability sigmoid((r(a) - r(b)) / temperature), drawn with ``generator``. At temperature 1 DPO's
    population optimum on such pairs is ``target``'s posterior pi*; at temperature t it is the
    posterior at beta * t. Costs 2 * num_pairs reward evaluations per prompt.

    Returns
    -------
    Preferences
        The prompts' pairs in prompt order.
    """
    from bayes_rlhf.samplers._common import as_prompts

    check_generator(generator)
    if generator is None:
        raise ConfigError("sample_preferences needs generator=torch.Generator().manual_seed(seed)")
    num_pairs = check_int(num_pairs, "num_pairs", 1)
    temperature = check_real(temperature, "temperature", low=0.0, low_open=True)
    prompts = as_prompts(target, prompts)
    parts = []
    for p in prompts:
        c = target.prior.sample(p, 2 * num_pairs, target.max_new_tokens, generator=generator)
        r = target.rewards(p, c.ids, c.mask).cpu()
        a, b = torch.arange(num_pairs), torch.arange(num_pairs, 2 * num_pairs)
        a_wins = torch.rand(num_pairs, generator=generator, dtype=torch.float64) < label_probabilities(
            r[a], r[b], "bradley_terry", temperature)
        chosen, rejected = torch.where(a_wins, a, b), torch.where(a_wins, b, a)
        ids, mask = c.ids.cpu(), c.mask.cpu()
        parts.append((ids[chosen], mask[chosen], ids[rejected], mask[rejected]))
    cat = [torch.cat([part[j] for part in parts]) for j in range(4)]
    return Preferences(tuple(p for p in prompts for _ in range(num_pairs)), *cat)


# ----------------------------------------------------------------------------- from user data
def as_preferences(data, lm, max_new_tokens: int) -> Preferences:
    """``data`` as ``Preferences`` tokenised for ``lm``: a ``Preferences``, a ``datasets.Dataset`` (or any
    table with ``column_names`` and columns "prompt", "chosen", "rejected") or (prompt, chosen, rejected)
    triples of str. A text completion is a whole response: EOS is appended when it is shorter than
    ``max_new_tokens`` tokens; a longer one is refused (PromptError) rather than cut."""
    if isinstance(data, Preferences):
        if data.max_new_tokens != max_new_tokens:
            raise ConfigError(f"the preferences hold completions of {data.max_new_tokens} tokens; the target's "
                              f"max_new_tokens is {max_new_tokens}: sample them for this target")
        if not len(data):
            raise ConfigError("preferences is empty; give at least one (prompt, chosen, rejected) pair")
        V = lm.vocab_size
        for ids in (data.chosen_ids, data.rejected_ids):
            if ids.numel() and (int(ids.max()) >= V or int(ids.min()) < 0):
                raise TokenizerMismatchError(f"the preferences hold token ids outside this model's vocabulary of {V}: "
                                             "they were tokenised for another model; sample them for this target")
        return data
    triples = _triples(data)
    rows = {"chosen": [], "rejected": []}
    for i, (prompt, chosen, rejected) in enumerate(triples):
        for key, text in (("chosen", chosen), ("rejected", rejected)):
            rows[key].append(_completion_ids(lm, text, max_new_tokens, f"{key} completion of pair {i}"))
    c_ids, c_mask = lm.vocabulary.pad(rows["chosen"], max_new_tokens)
    r_ids, r_mask = lm.vocabulary.pad(rows["rejected"], max_new_tokens)
    return Preferences(tuple(t[0] for t in triples), c_ids, c_mask, r_ids, r_mask)


def _triples(data) -> list[tuple[str, str, str]]:
    if data is None:
        raise ConfigError("preferences is None; give (prompt, chosen, rejected) triples or a datasets.Dataset")
    if hasattr(data, "column_names"):  # a datasets.Dataset (read by duck typing: datasets stays optional)
        missing = [c for c in ("prompt", "chosen", "rejected") if c not in data.column_names]
        if missing:
            raise ConfigError(f"the preference dataset has no column(s) {missing}; it has {list(data.column_names)}")
        data = list(zip(data["prompt"], data["chosen"], data["rejected"]))
    if isinstance(data, (str, bytes)):
        raise ConfigError("preferences is a string; give a list of (prompt, chosen, rejected) triples")
    triples = list(data)
    if not triples:
        raise ConfigError("preferences is empty; give at least one (prompt, chosen, rejected) pair")
    for i, t in enumerate(triples):
        if not (isinstance(t, (tuple, list)) and len(t) == 3 and all(isinstance(s, str) for s in t)):
            raise ConfigError(f"preference {i} is {t!r}; each must be a (prompt, chosen, rejected) triple of str")
    return [tuple(t) for t in triples]


def _completion_ids(lm, text: str, T: int, what: str) -> list[int]:
    ids = encode_known(lm.tokenizer, text, add_special_tokens=False, what=what)
    eos = lm.eos_token_id
    if eos is not None and eos in ids:
        ids = ids[: ids.index(eos) + 1]
    elif eos is not None and len(ids) < T:
        ids = ids + [eos]
    if len(ids) > T:
        raise PromptError(f"the {what} is {len(ids)} tokens, more than max_new_tokens={T}; raise the target's "
                          "max_new_tokens or drop the pair (a cut completion is not the one that was judged)")
    return ids


def check_covers(preferences: Preferences, prompts: Sequence[str]) -> None:
    """ConfigError unless every training prompt has a pair and every pair's prompt is a training prompt."""
    have, want = set(preferences.prompts), set(prompts)
    if have - want:
        raise ConfigError(f"the preferences have pairs for {sorted(have - want)[:5]}, which are not training "
                          "prompts; add them to prompts or drop those pairs")
    if want - have:
        raise ConfigError(f"the training prompts {sorted(want - have)[:5]} have no preference pairs; give pairs "
                          "for every prompt or leave those prompts out")


# ----------------------------------------------------------------------------- exact answers
def win_rates(post, judge: str = "bradley_terry", temperature: float = 1.0, block: int = 2048) -> torch.Tensor:
    """w(a) = E_{b ~ pi0} P(a > b) for every completion a of ``post``: Tensor [K] (float64).

    Computed over the distinct reward values (K x U work for U of them, in blocks)."""
    values, inverse = torch.unique(post.rewards, return_inverse=True)
    mass = group_sum(post.prior_log_probs.exp(), inverse, len(values))
    out = torch.cat([label_probabilities(values[s: s + block, None], values[None, :], judge, temperature) @ mass
                     for s in range(0, len(values), block)])
    return out[inverse]


def dpo_fixed_point(post, temperature: float = 1.0) -> torch.Tensor:
    """log q [K] minimising DPO's population loss on pi0 pairs with Bradley-Terry labels at ``temperature``:
    pi0 exp(r / (beta temperature)) / Z, ``post.log_probs`` at temperature 1."""
    return normalized_log_weights(post.prior_log_probs + post.rewards / (post.beta * temperature))


def ipo_fixed_point(post, tau: float | None = None, judge: str = "bradley_terry",
                    temperature: float = 1.0) -> torch.Tensor:
    """log q [K] minimising IPO's population loss on pi0 pairs: pi0 exp(w / tau) / Z, w = ``win_rates``;
    ``tau`` defaults to ``post.beta`` (TRL's IPO uses its beta as tau)."""
    tau = post.beta if tau is None else tau
    return normalized_log_weights(post.prior_log_probs + win_rates(post, judge, temperature) / tau)


def online_dpo_fixed_point(post, judge: str = "bradley_terry") -> torch.Tensor:
    """log q [K] that online DPO tends to: pi* for the Bradley-Terry judge (temperature 1), pi0 restricted
    to the highest-reward completions for the "better" judge (-inf elsewhere)."""
    if judge == "bradley_terry":
        return post.log_probs.clone()
    if judge == "better":
        best = post.rewards == post.rewards.max()
        return normalized_log_weights(post.prior_log_probs.masked_fill(~best, -math.inf))
    raise ConfigError(f"judge must be one of {list(JUDGES)}, got {judge!r}")


def exact_preference_loss(log_q: torch.Tensor, post, loss: str = "dpo", *, judge: str = "bradley_terry",
                          temperature: float = 1.0, tau: float | None = None,
                          pair_log_probs: torch.Tensor | None = None) -> torch.Tensor:
    """The population DPO or IPO loss of the table ``log_q`` [K] (differentiable), pairs from
    ``pair_log_probs`` [K] x itself (pi0 by default), labels by ``judge`` (module docstring).

    Holds K x K tables: K <= MAX_PAIR_TABLE."""
    K = log_q.shape[0]
    if K > MAX_PAIR_TABLE:
        raise ConfigError(f"exact_preference_loss holds K x K tables; this posterior has K={K} > "
                          f"{MAX_PAIR_TABLE} completions: use a smaller space")
    if loss not in ("dpo", "ipo"):
        raise ConfigError(f"loss must be 'dpo' or 'ipo', got {loss!r}")
    s = (post.prior_log_probs if pair_log_probs is None else pair_log_probs).exp()
    u = log_q - post.prior_log_probs
    delta = u[:, None] - u[None, :]                                   # [K, K] Delta_ab
    p = label_probabilities(post.rewards[:, None], post.rewards[None, :], judge, temperature)
    if loss == "dpo":
        per_pair = -(p * F.logsigmoid(post.beta * delta) + (1 - p) * F.logsigmoid(-post.beta * delta))
    else:
        c = 0.5 / (post.beta if tau is None else tau)
        per_pair = p * (delta - c) ** 2 + (1 - p) * (delta + c) ** 2
    return (s[:, None] * s[None, :] * per_pair).sum()


__all__ = ["Preferences", "JUDGES", "label_probabilities", "sample_preferences", "as_preferences", "check_covers",
           "win_rates", "dpo_fixed_point", "ipo_fixed_point", "online_dpo_fixed_point", "exact_preference_loss"]
