"""What every sampler in ``benchmarks/smc.py`` shares: one HF model, one token count, one constraint.

- ``SharedModel``: the SmolLM2 ``LlamaForCausalLM`` loaded once; every library gets this object.
  A forward hook on it (1) counts ``input_ids.numel()`` of every forward, i.e. rows x positions
  that actually ran (prompt passes, padding and recomputed prefixes included, cached positions
  not), the same way for all three libraries, and (2) when ``top_k`` is set, keeps only the k
  largest logits per position (the rest -inf, ties at the k-th kept: the rule of
  ``CausalLM.log_softmax``), so every library sees the same truncated prior.
- ``forbidden_ids``: the lipogram's forbidden set, by token id, given to every library.
- ``task_rewards``: tasks A (no 'e', at most T tokens) and B (also ends with EOS within T).
- ``exact_log_z``: both tasks' exact log Z on the top-k prior from one enumeration.
- ``reuse_references``: an earlier run's references, where what they depend on is unchanged.
- ``reference_log_z``: the untruncated tasks' reference, log of the mean of Z_hat over runs of
  sequential importance sampling with the locally constrained proposal (both tasks from the
  same draws), with its delta-method SE.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

import bayes_rlhf as br
from bayes_rlhf.exact import ExactPosterior, enumerate_completions
from bayes_rlhf.models.causal_lm import sample_categorical


class SharedModel:
    """The HF model every library runs, with a counting (and optionally truncating) forward hook."""

    def __init__(self, model_dir):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.positions = 0
        self.forwards = 0
        self.top_k: int | None = None
        self.first_input_ids: list | None = None  # the first forward's input_ids after reset()
        self.model.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.positions += int(ids.numel())
        self.forwards += 1
        if self.first_input_ids is None:
            self.first_input_ids = ids[0].tolist()
        if self.top_k is not None and self.top_k < output.logits.shape[-1]:
            logits = output.logits
            kth = torch.topk(logits, self.top_k, dim=-1).values[..., -1:]
            output.logits = logits.masked_fill(logits < kth, float("-inf"))
        return output

    def reset(self) -> None:
        self.positions, self.forwards, self.first_input_ids = 0, 0, None

    def causal_lm(self) -> br.CausalLM:
        """Ours over the shared model (no truncation of our own: the hook truncates)."""
        return br.CausalLM(self.model, self.tokenizer, device="cpu")


def forbidden_ids(tokenizer, vocab_size: int) -> torch.Tensor:
    """BoolTensor [V]: tokens whose text contains 'e' or 'E', and every special token except EOS.

    Special tokens are never text, so none may appear; EOS ends a completion and is allowed.
    """
    eos = tokenizer.eos_token_id
    special = set(tokenizer.all_special_ids) - {eos}
    bad = torch.zeros(vocab_size, dtype=torch.bool)
    for i in range(vocab_size):
        if i in special or (i != eos and "e" in tokenizer.decode([i], skip_special_tokens=True).lower()):
            bad[i] = True
    return bad


def task_rewards(bad: torch.Tensor, eos: int) -> dict:
    """{"A": no forbidden token, "B": also ends with EOS}: TokenRewards, r = 0 or -inf (beta = 1)."""
    def lipogram(ids, mask):
        hit = (bad[ids] & mask).any(-1)
        return torch.where(hit, -math.inf, 0.0).double()

    def lipogram_and_ends(ids, mask):
        hit = (bad[ids] & mask).any(-1) | ~((ids == eos) & mask).any(-1)
        return torch.where(hit, -math.inf, 0.0).double()

    return {"A": br.TokenReward(lipogram, name="no_letter_e"),
            "B": br.TokenReward(lipogram_and_ends, name="no_letter_e_ends_with_eos")}


def exact_log_z(lm: br.CausalLM, prompt: str, T: int, rewards: dict) -> dict:
    """{task: exact log Z} on ``lm`` (a top_k CausalLM), every task from one enumeration."""
    ids, mask, prior_lp = enumerate_completions(lm, prompt, T)
    out = {}
    for task, reward in rewards.items():
        r = br.Target(prior=lm, reward=reward, beta=1.0, max_new_tokens=T).rewards(prompt, ids, mask)
        out[task] = float(ExactPosterior(prompt, ids, mask, prior_lp, r.double(), 1.0, lm).log_z)
    return out


def constrained_is_weights(lm: br.CausalLM, prompt: str, T: int, bad: torch.Tensor, n: int,
                           generator: torch.Generator, chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """log-weights [n] for tasks A and B from sequential IS with the locally constrained proposal.

    Each particle draws x_t from pi0 restricted to allowed tokens (EOS allowed) and carries
    log w = sum_t log pi0(allowed | x_<t) (task A). For task B the last step is summed out:
    a particle that ended with EOS at s <= T keeps its A weight; one that reached step T
    without EOS has log w_B = sum_{t<T} log allowed_t + log pi0(EOS | x_<T). Both are unbiased.
    """
    eos = lm.eos_token_id
    out_a, out_b = [], []
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        state, logp = lm.start(prompt, m)
        w_a = torch.zeros(m, dtype=torch.float64)
        w_b = torch.full((m,), -math.inf, dtype=torch.float64)
        rows = torch.arange(m)  # the particles still generating, in state order
        for t in range(T):
            logp = logp.double()
            allowed = torch.logsumexp(logp.masked_fill(bad, -math.inf), -1)
            if t == T - 1:
                w_b[rows] = w_a[rows] + logp[:, eos]
            w_a[rows] += allowed
            if t == T - 1:
                break
            tok = sample_categorical(logp.masked_fill(bad, -math.inf), generator=generator)
            ended = tok == eos
            w_b[rows[ended]] = w_a[rows[ended]]
            if ended.all():
                break
            keep = torch.nonzero(~ended).squeeze(-1)
            rows = rows[keep]
            state, logp = lm.step(state.reindex(keep), tok[keep])
        out_a.append(w_a)
        out_b.append(w_b)
    return torch.cat(out_a), torch.cat(out_b)


def log_mean_z(log_z_hats) -> tuple[float, float]:
    """log of the mean of Z_hat over runs, and its delta-method SE: sd(Z_hat) / (sqrt(R) mean(Z_hat))."""
    lz = torch.tensor(list(log_z_hats), dtype=torch.float64)
    R = lz.numel()
    m = float(torch.logsumexp(lz, 0) - math.log(R))
    rel = torch.exp(lz - m)  # Z_hat / mean
    se = float(rel.std(unbiased=True) / math.sqrt(R)) if R > 1 else math.nan
    return m, se


def reference_log_z(lm: br.CausalLM, prompt: str, T: int, bad: torch.Tensor, particles: int, runs: int,
                    seed: int) -> dict:
    """{task: {"log_z", "se", "runs": [log Z_hat per run], ...}} for the untruncated tasks."""
    per_run = {"A": [], "B": []}
    for r in range(runs):
        g = torch.Generator().manual_seed(seed + r)
        w_a, w_b = constrained_is_weights(lm, prompt, T, bad, particles, g)
        per_run["A"].append(float(torch.logsumexp(w_a, 0) - math.log(particles)))
        per_run["B"].append(float(torch.logsumexp(w_b, 0) - math.log(particles)))
    out = {}
    for task, lzs in per_run.items():
        m, se = log_mean_z(lzs)
        out[task] = {"log_z": m, "se": se, "runs": lzs, "particles": particles,
                     "estimator": "log of the mean of Z_hat over runs of sequential importance sampling with "
                                  "the locally constrained proposal (pi0 restricted to allowed tokens, weight = "
                                  "allowed mass per step; task B sums out the last token's EOS probability)"}
    return out


def rmse_with_se(log_z_hats, ref: float, boot: int = 2000, seed: int = 0) -> dict:
    """RMSE of finite log Z_hat about ``ref``, its bootstrap SE over repeats, and the failures.

    A run with log Z_hat = -inf (no surviving particle) is a failure: counted, not averaged.
    """
    vals = [v for v in log_z_hats if math.isfinite(v)]
    out = {"failures": len(log_z_hats) - len(vals), "repeats": len(log_z_hats)}
    if not vals:
        return {**out, "rmse": math.nan, "rmse_se": math.nan, "bias": math.nan}
    err = torch.tensor(vals, dtype=torch.float64) - ref
    rmse = float(err.pow(2).mean().sqrt())
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(vals), (boot, len(vals)), generator=g)
    se = float(err[idx].pow(2).mean(-1).sqrt().std()) if len(vals) > 1 else math.nan
    return {**out, "rmse": rmse, "rmse_se": se, "bias": float(err.mean())}


def reference_config(config: dict) -> tuple[dict, dict]:
    """What the exact and the sampled references depend on, from a run's config."""
    exact = {k: config.get(k) for k in ("prompt", "T", "top_k", "forbidden_tokens", "vocab")}
    n_ref = config["reference_factor"] * max(config["particles"] + config["peer_particles"])
    sampled = {**{k: config.get(k) for k in ("prompt", "T", "forbidden_tokens", "vocab", "reference_runs")},
               "reference_particles": n_ref}
    return exact, sampled


def reuse_references(path: Path, config: dict, data: dict) -> None:
    """Copy the exact and sampled references of an earlier run into ``data`` where their config matches."""
    old = json.loads(path.read_text())
    ex_old, ref_old = reference_config(old["config"])
    ex_new, ref_new = reference_config(config)
    notes = []
    for key, same, extra in (("exact", ex_old == ex_new, ()), ("reference", ref_old == ref_new, ("reference_seconds",))):
        if same and key in old:
            data[key] = old[key]
            for e in extra:
                if e in old:
                    data[e] = old[e]
            notes.append(f"{key} reused")
        else:
            notes.append(f"{key} recomputed (config differs or absent)")
    data["references_from"] = {"path": str(path), "git": old.get("git"), "notes": notes}
    print(f"references from {path} (git {old.get('git')}): " + "; ".join(notes))
