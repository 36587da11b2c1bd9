"""``RunState``: the mutable pieces of one training run (policy, value head, learned log Z, optimiser,
generator, reward-evaluation count), built from the objective's declared needs, saved and restored
by checkpoints."""

from __future__ import annotations

import torch

from bayes_rlhf.models.causal_lm import CausalLM
from bayes_rlhf.target import Target
from bayes_rlhf.variational.distributed import LocalBackend
from bayes_rlhf.variational.objectives import BoundObjective
from bayes_rlhf.variational.policy import make_policy, merged, value_head_for
from bayes_rlhf.variational.rollout import Rollout


class RunState:
    """Everything a run changes as it goes; ``objective`` says whether it has a value head and a log Z."""

    def __init__(self, target: Target, prompts: list[str], config, objective: BoundObjective, backend=None):
        self.target, self.prompts, self.config, self.objective = target, prompts, config, objective
        self.backend = LocalBackend() if backend is None else backend
        self.policy = make_policy(target.prior, config)
        self.value_head = value_head_for(self.policy) if objective.value_head else None
        self.log_z = torch.zeros(len(prompts), dtype=torch.float64, device=self.policy.device, requires_grad=True)
        self.log_z_set = torch.zeros(len(prompts), dtype=torch.bool)
        self.params = [p for p in self.policy.model.parameters() if p.requires_grad]
        groups = [{"params": list(self.params)}]
        if self.value_head is not None:
            self.params += list(self.value_head.parameters())
            groups.append({"params": list(self.value_head.parameters()), "lr": objective.value_head_lr})
        if objective.learns_log_z:
            groups.append({"params": [self.log_z], "lr": objective.log_z_lr, "weight_decay": 0.0})
        opt = torch.optim.Adam(groups, lr=config.lr, betas=config.adam_betas, weight_decay=config.weight_decay,
                               fused=_fused_ok(self.params + [self.log_z]))
        # train_model / train_value_head: the modules to call for a differentiated forward (DDP-wrapped
        # under accelerate); policy.model and value_head stay the plain modules for sampling and saving
        self.train_model, self.train_value_head, self.opt = self.backend.prepare(self.policy.model,
                                                                                 self.value_head, opt)
        self.generator = torch.Generator().manual_seed(self.backend.seed(config.seed))
        self.reward_evals = 0

    def tensors(self) -> dict:
        out = {f"model.{k}": v for k, v in self.policy.model.state_dict().items()}
        if self.value_head is not None:
            out.update({f"value_head.{k}": v for k, v in self.value_head.state_dict().items()})
        out["log_z"], out["log_z_set"] = self.log_z.detach(), self.log_z_set
        return out

    def load(self, state: dict) -> None:
        t = state["model"]
        self.policy.model.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")})
        if self.value_head is not None:
            self.value_head.load_state_dict({k[11:]: v for k, v in t.items() if k.startswith("value_head.")})
        with torch.no_grad():
            self.log_z.copy_(t["log_z"])
        self.log_z_set = t["log_z_set"].clone()
        self.opt.load_state_dict(state["optimizer"])
        i = self.backend.process_index
        if i < len(state["process_rng"]):  # each process continues its own stream
            self.generator.set_state(state["process_rng"][i])
        else:  # a checkpoint that kept process 0's generator only: the others draw fresh streams
            self.generator.manual_seed(self.backend.seed(self.config.seed, state["step"]))
        evals = int(state["history"][-1]["reward_evals"]) if state["history"] else 0
        self.reward_evals = evals // self.backend.num_processes  # the history sums the processes

    def step_prompts(self) -> list[int]:
        """The prompts of the next step: all, or ``prompts_per_step`` of them drawn with the generator."""
        k = self.config.prompts_per_step
        if k is None or k >= len(self.prompts):
            return list(range(len(self.prompts)))
        return sorted(torch.randperm(len(self.prompts), generator=self.generator)[:k].tolist())

    def row_log_z(self, rollout: Rollout, device) -> torch.Tensor | None:
        """The learned log Z of each row's prompt (differentiable), or None without a learned log Z."""
        return self.log_z[rollout.prompt_index.to(device)] if self.objective.learns_log_z else None

    def init_log_z(self, rollout: Rollout, step_prompts: list[int]) -> None:
        """Start each prompt's learned log Z at its first batch's ELBO estimate mean(-f)."""
        f = rollout.policy_logp.sum(-1) - rollout.prior_logp.sum(-1) - rollout.rewards / self.target.beta
        with torch.no_grad():
            for g, pid in enumerate(step_prompts):
                if not self.log_z_set[pid]:
                    sel = rollout.group == g
                    self.log_z[pid] = -f[sel].mean()
                    self.log_z_set[pid] = True
        self.backend.sync_log_z(self.log_z, self.log_z_set)

    def finish(self) -> CausalLM:
        """The trained policy, unwrapped from accelerate (DDP, bf16 forward hook), LoRA merged."""
        model = self.backend.unwrap(self.train_model)
        policy = self.policy
        if model is not policy.model:
            policy = CausalLM(model, policy.tokenizer, device=policy.device, top_k=policy.top_k,
                              support=policy.support, source=policy.source)
        return merged(policy)


def _fused_ok(params: list[torch.Tensor]) -> bool | None:
    """True when every parameter is a CPU or CUDA float tensor: Adam's fused kernel then updates each
    tensor in one pass (on CPU the per-op loop took 1.8 s of a 7 s SmolLM2 step; fused, about 0.2 s).
    None (torch's default choice) otherwise."""
    kinds = {(p.device.type, p.dtype) for p in params}
    ok = all(dev in ("cpu", "cuda") and dt in (torch.float32, torch.float64, torch.float16, torch.bfloat16)
             for dev, dt in kinds)
    return True if ok and len({dev for dev, _ in kinds}) == 1 else None
