"""A Bradley-Terry reward model trained from preference pairs, and the DPO closed form.

Model: a scalar head on the last hidden state of the last real token of ``prompt + separator +
completion``, on top of any transformers model that returns hidden states::

    r(c, y) = w . h_last(c + y) + b
    P(y_w > y_l | c) = sigmoid(r(c, y_w) - r(c, y_l))
    loss = -mean log sigmoid(r(c, y_w) - r(c, y_l))            (backbone and head trained jointly)

DPO's closed form links a policy to this reward through the posterior: with
pi*(y | c) = pi0(y | c) exp(r(c, y) / beta) / Z(c),

    beta log pi*(y | c) / pi0(y | c) = r(c, y) - beta log Z(c)

so the DPO loss of pi* on a pair equals the Bradley-Terry loss of r (log Z cancels).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from bayes_rlhf._checks import check_int, check_real, is_real
from bayes_rlhf.errors import ConfigError, ModelLoadError, RewardError


@dataclass
class BradleyTerryConfig:
    """Training settings of ``BradleyTerryReward.fit``.

    Parameters
    ----------
    epochs : int
        Passes over the pairs.
    batch_size : int
        Pairs per optimiser step.
    lr, weight_decay : float
        AdamW settings (backbone and head).
    seed : int
        Seed of the shuffling generator and of the head's initialisation.
    progress : bool
        Show a progress bar over the steps.
    """

    epochs: int = 5
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        for name, low in (("epochs", 1), ("batch_size", 1), ("seed", 0)):
            setattr(self, name, check_int(getattr(self, name), f"BradleyTerryConfig.{name}", low))
        self.lr = check_real(self.lr, "BradleyTerryConfig.lr", low=0.0, low_open=True)
        self.weight_decay = check_real(self.weight_decay, "BradleyTerryConfig.weight_decay", low=0.0)


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """-mean log sigmoid(r_chosen - r_rejected) over pairs ([n], [n] -> scalar)."""
    return -F.logsigmoid(chosen - rejected).mean()


def dpo_implied_reward(policy_log_probs: torch.Tensor, prior_log_probs: torch.Tensor, beta: float) -> torch.Tensor:
    """beta log pi / pi0 [n]: the reward a policy implies, up to the prompt's constant beta log Z."""
    return beta * (policy_log_probs - prior_log_probs)


def dpo_loss(policy_chosen: torch.Tensor, prior_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             prior_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO loss -mean log sigmoid(beta [log pi/pi0 (y_w) - log pi/pi0 (y_l)]) from sequence log-probs [n].

    Each argument is one sequence log-prob per pair, Tensor [n] (summed over tokens); beta > 0.
    Other shapes (per-token [n, T], [n, 1] that would broadcast to n x n pairs) are a ConfigError.
    """
    b = float(beta) if isinstance(beta, torch.Tensor) and beta.numel() == 1 else beta
    if not is_real(b) or not math.isfinite(b) or b <= 0:
        raise ConfigError(f"dpo_loss: beta must be a finite number > 0, got {beta!r}")
    shapes = [tuple(torch.as_tensor(x).shape) for x in (policy_chosen, prior_chosen, policy_rejected, prior_rejected)]
    if len(shapes[0]) != 1 or any(s != shapes[0] for s in shapes):
        raise ConfigError(f"dpo_loss takes four sequence log-prob tensors [n] of one shape (sum per-token log-probs "
                          f"over each completion first), got shapes {shapes}")
    return bradley_terry_loss(dpo_implied_reward(policy_chosen, prior_chosen, beta),
                              dpo_implied_reward(policy_rejected, prior_rejected, beta))


def _check_pairs(pairs) -> list[tuple[str, str, str]]:
    pairs = list(pairs) if pairs is not None else []
    if not pairs:
        raise RewardError("pairs is empty; give (prompt, chosen, rejected) triples of str")
    for i, p in enumerate(pairs):
        if not (isinstance(p, (tuple, list)) and len(p) == 3 and all(isinstance(s, str) for s in p)):
            raise RewardError(f"pair {i} is {p!r}; each pair must be a (prompt, chosen, rejected) triple of str")
    return [tuple(p) for p in pairs]


class BradleyTerryReward:
    """A scalar reward model on top of a transformers model, usable as a text reward.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        Any model whose forward accepts ``output_hidden_states=True`` (a causal LM, an encoder...).
        It is copied: training never changes the caller's model.
    tokenizer : transformers tokenizer
    head : torch.nn.Linear, optional
        The scalar head (hidden -> 1); a new one (zero bias) by default.
    separator : str
        Joins prompt and completion (``include_prompt``).
    include_prompt : bool
        Score ``prompt + separator + completion`` (True) or the completion alone.
    """

    def __init__(self, model, tokenizer, head: torch.nn.Linear | None = None, separator: str = " ",
                 include_prompt: bool = True, device=None, batch_size: int = 64, name: str = "bradley_terry"):
        if not hasattr(model, "config") or not callable(model):
            raise RewardError(f"BradleyTerryReward needs a transformers model, got {type(model).__name__}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = copy.deepcopy(model).to(self.device).eval()
        self.tokenizer = tokenizer
        dtype = next(self.model.parameters()).dtype
        if head is None:
            hidden = getattr(model.config, "hidden_size", None) or model.get_input_embeddings().weight.shape[1]
            head = torch.nn.Linear(hidden, 1, dtype=dtype)
            torch.nn.init.zeros_(head.bias)
        self.head = head.to(self.device, dtype)
        self.separator, self.include_prompt = separator, include_prompt
        self.batch_size, self.name = batch_size, name

    # ---------------------------------------------------------------- scoring
    def _texts(self, prompts: Sequence[str], completions: Sequence[str]) -> list[str]:
        if len(prompts) != len(completions):
            raise RewardError(f"{len(prompts)} prompts for {len(completions)} completions; give one per completion")
        if not self.include_prompt:
            return list(completions)
        return [p + self.separator + c if p and c else p + c for p, c in zip(prompts, completions)]

    def scores(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        """Differentiable rewards [n] of one batch (no batching, no no_grad)."""
        enc = self.tokenizer(self._texts(prompts, completions), return_tensors="pt", padding=True)
        ids, att = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        if ids.shape[1] == 0:
            raise RewardError("every text is empty after tokenisation; the reward model has nothing to score")
        out = self.model(input_ids=ids, attention_mask=att, output_hidden_states=True)
        h = out.hidden_states[-1]
        pos = torch.arange(ids.shape[1], device=self.device)
        last = (att * pos).argmax(-1)  # last real token, for left or right padding
        return self.head(h[torch.arange(ids.shape[0], device=self.device), last]).squeeze(-1)

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        """Rewards (float64 [n], CPU), in batches without gradients: the text-reward protocol."""
        out = []
        with torch.no_grad():
            for s in range(0, len(completions), self.batch_size):
                out.append(self.scores(list(prompts[s: s + self.batch_size]),
                                       list(completions[s: s + self.batch_size])).double().cpu())
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)

    def accuracy(self, pairs) -> float:
        """Fraction of pairs where the chosen completion gets the higher reward."""
        pairs = _check_pairs(pairs)
        pr, ch, rj = zip(*pairs)
        return float((self(pr, ch) > self(pr, rj)).double().mean())

    # ---------------------------------------------------------------- training
    @classmethod
    def fit(cls, model, tokenizer, pairs, config: BradleyTerryConfig | None = None,
            **kwargs) -> tuple["BradleyTerryReward", list[float]]:
        """Train backbone and head on (prompt, chosen, rejected) pairs; return the reward and the
        loss of each step. Extra keyword arguments go to the constructor."""
        config = config or BradleyTerryConfig()
        pairs = _check_pairs(pairs)
        with torch.random.fork_rng(devices=[]):  # the head's init draws from the global generator
            torch.manual_seed(config.seed)
            reward = cls(model, tokenizer, **kwargs)
        params = list(reward.model.parameters()) + list(reward.head.parameters())
        opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        gen = torch.Generator().manual_seed(config.seed)
        n_batches = math.ceil(len(pairs) / config.batch_size)
        losses = []
        bar = tqdm(total=config.epochs * n_batches, desc="bradley-terry", disable=not config.progress)
        for _ in range(config.epochs):
            order = torch.randperm(len(pairs), generator=gen).tolist()
            for b in range(n_batches):
                batch = [pairs[i] for i in order[b * config.batch_size: (b + 1) * config.batch_size]]
                pr, ch, rj = (list(x) for x in zip(*batch))
                scores = reward.scores(pr + pr, ch + rj)
                loss = bradley_terry_loss(scores[: len(batch)], scores[len(batch):])
                if not torch.isfinite(loss):
                    raise RewardError(f"the Bradley-Terry loss is {float(loss.detach())} at step {len(losses) + 1}; "
                                      "lower BradleyTerryConfig.lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                bar.update(1)
        bar.close()
        reward.model.eval()
        return reward, losses

    # ---------------------------------------------------------------- persistence
    def save(self, directory) -> Path:
        """Write backbone (safetensors), tokenizer, head and settings to ``directory``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory / "backbone")
        self.tokenizer.save_pretrained(directory / "backbone")
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                  str(directory / "head.safetensors"))
        meta = {"separator": self.separator, "include_prompt": self.include_prompt, "name": self.name,
                "hidden": self.head.in_features,
                "auto": "causal_lm" if getattr(self.model, "get_output_embeddings", lambda: None)() is not None
                else "model"}
        (directory / "bradley_terry.json").write_text(json.dumps(meta))
        return directory

    @classmethod
    def load(cls, directory, device=None) -> "BradleyTerryReward":
        """Load a reward written by ``save`` (``trust_remote_code`` stays off)."""
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

        from bayes_rlhf.models.loading import own_aligned

        directory = Path(directory)
        if not (directory / "bradley_terry.json").exists():
            raise ModelLoadError(f"{str(directory)!r} holds no Bradley-Terry reward (no bradley_terry.json); "
                                 "give a directory written by BradleyTerryReward.save")
        meta = json.loads((directory / "bradley_terry.json").read_text())
        tokenizer = AutoTokenizer.from_pretrained(directory / "backbone")
        auto = AutoModelForCausalLM if meta.get("auto") == "causal_lm" else AutoModel
        model = own_aligned(auto.from_pretrained(directory / "backbone"))  # bit-for-bit reloads
        state = load_file(str(directory / "head.safetensors"))
        head = torch.nn.Linear(meta["hidden"], 1, dtype=state["weight"].dtype)
        head.load_state_dict(state)
        return cls(model, tokenizer, head=head, separator=meta["separator"],
                   include_prompt=meta["include_prompt"], device=device, name=meta["name"])

    def __repr__(self) -> str:
        return f"BradleyTerryReward({type(self.model).__name__}, name={self.name!r})"


__all__ = ["BradleyTerryReward", "BradleyTerryConfig", "bradley_terry_loss", "dpo_loss", "dpo_implied_reward"]
