"""What every objective shares: the batch its loss reads, what the loss returns, and the record
that declares the objective to the training loop.

An objective is one ``Objective`` record::

    Objective(name, loss, settings=None, source=policy, inner_epochs=1, value_head_lr=None,
              log_z_lr=None, check=accept, default_lr=1e-3, fixed_point="pi*", retarget=None)

``loss(batch: PolicyBatch, settings) -> ObjectiveOutput`` is a pure function in nats (rewards enter
as r / beta); ``settings`` is the ``TrainerConfig`` section the record names (``config.ppo`` for
PPO), or None. The other hooks are functions of that section too: where the samples come from
(``sources.Source``), how many gradient steps a batch takes, the learning rate of a value head or
of a learned log Z per prompt (None: the objective has none), and cross-field checks run when a
``TrainerConfig`` naming the objective is built. ``retarget(settings, target, prompts) -> Target``,
where given, replaces the target before training by the one the objective fits (best-of-N
distillation: the Target whose posterior is the best-of-N law). ``record.bind(config)`` resolves
them all into a ``BoundObjective`` of plain values, which is all the loop reads. Calling a record,
``record(batch, config)``, is its loss on the config's section.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from bayes_rlhf.logweights import group_softmax, group_sum
from bayes_rlhf.variational.sources import POLICY, Source


@dataclass(frozen=True)
class PolicyBatch:
    """One step's samples and everything the losses need (n rows, T tokens; float64 unless noted).

    Attributes
    ----------
    logq : Tensor [n, T]
        Per-token log-probs under the current policy, differentiable (0 at padding).
    old_logq : Tensor [n, T]
        The same under the policy that sampled the batch (detached).
    prior_logp : Tensor [n, T]
        Per-token log-probs under pi0.
    mask : BoolTensor [n, T]
    rewards : Tensor [n]
    group : LongTensor [n]
        Prompt of each row, numbered 0..P-1 within the batch.
    beta : float
    proposal_log_probs : Tensor [n], optional
        log s(x) of the distribution the rows were drawn from (policy or prior samples).
    log_weights : Tensor [n], optional
        Given log-weights of the rows (distillation from weighted samples); None = uniform.
    values, old_values : Tensor [n, T], optional
        Value-head predictions V(s_t) before each token (differentiable / detached), PPO.
    log_z : Tensor [n], optional
        The learned log Z of each row's prompt (differentiable), trajectory balance.
    """

    logq: torch.Tensor
    old_logq: torch.Tensor
    prior_logp: torch.Tensor
    mask: torch.Tensor
    rewards: torch.Tensor
    group: torch.Tensor
    beta: float
    proposal_log_probs: torch.Tensor | None = None
    log_weights: torch.Tensor | None = None
    values: torch.Tensor | None = None
    old_values: torch.Tensor | None = None
    log_z: torch.Tensor | None = None

    @property
    def num_groups(self) -> int:
        return int(self.group.max()) + 1


@dataclass
class ObjectiveOutput:
    """A scalar loss to minimise and plain-float statistics for the history."""

    loss: torch.Tensor
    stats: dict = field(default_factory=dict)


def _policy_samples(settings) -> Source:
    return POLICY


def _once(settings) -> int:
    return 1


def _nothing(settings) -> None:
    return None


@dataclass(frozen=True)
class BoundObjective:
    """An objective resolved against one config: what the training loop reads, as plain values.

    Attributes
    ----------
    name : str
    loss : callable
        ``loss(batch) -> ObjectiveOutput`` (the record's loss with its settings bound).
    source : Source
        Where each step's samples come from.
    inner_epochs : int
        Gradient steps per sampled batch.
    value_head_lr : float or None
        Adam learning rate of a value head; None: no value head.
    log_z_lr : float or None
        Learning rate of a learned log Z per prompt; None: none is learned.
    retarget : callable or None
        ``retarget(target, prompts) -> Target``: the target the loop trains on; None: the given one.
    """

    name: str
    loss: Callable[[PolicyBatch], "ObjectiveOutput"]
    source: Source
    inner_epochs: int
    value_head_lr: float | None
    log_z_lr: float | None
    retarget: Callable | None = None

    def fit_target(self, target, prompts: list[str]):
        """The Target the objective fits: ``target`` itself unless the record retargets it."""
        return target if self.retarget is None else self.retarget(target, prompts)

    @property
    def on_policy(self) -> bool:
        """True when the batch is drawn from the policy being trained (its estimates are q's)."""
        return self.source.on_policy

    @property
    def value_head(self) -> bool:
        return self.value_head_lr is not None

    @property
    def learns_log_z(self) -> bool:
        return self.log_z_lr is not None


@dataclass(frozen=True)
class Objective:
    """One objective: its loss and what it needs from the loop (see the module docstring).

    Attributes
    ----------
    name : str
        The ``TrainerConfig.objective`` value.
    loss : callable
        ``loss(batch, settings) -> ObjectiveOutput``.
    settings : str or None
        The ``TrainerConfig`` field holding its settings (a ``settings.Section``); None for none.
    source, inner_epochs, value_head_lr, log_z_lr : callable
        Functions of the settings: a ``Source``, an int >= 1, a float or None, a float or None.
    check : callable
        ``check(settings)`` raises ConfigError for settings this objective cannot run with.
    default_lr : float
        The policy's learning rate when ``TrainerConfig.lr`` is None.
    fixed_point : str
        What the loss converges to: "pi*" or how it differs.
    retarget : callable or None
        ``retarget(settings, target, prompts) -> Target``: the target to fit instead of the given
        one (see the module docstring); None fits the given target.
    """

    name: str
    loss: Callable[[PolicyBatch, Any], ObjectiveOutput]
    settings: str | None = None
    source: Callable[[Any], Source] = _policy_samples
    inner_epochs: Callable[[Any], int] = _once
    value_head_lr: Callable[[Any], float | None] = _nothing
    log_z_lr: Callable[[Any], float | None] = _nothing
    check: Callable[[Any], None] = _nothing
    default_lr: float = 1e-3
    fixed_point: str = "pi*"
    retarget: Callable[[Any, Any, list], Any] | None = None

    def settings_of(self, config):
        """The config's section this objective reads (None when it has none)."""
        return None if self.settings is None else getattr(config, self.settings)

    def __call__(self, batch: PolicyBatch, config) -> ObjectiveOutput:
        """The loss of ``batch`` under ``config`` (a ``TrainerConfig``)."""
        return self.loss(batch, self.settings_of(config))

    def bind(self, config) -> BoundObjective:
        s = self.settings_of(config)
        retarget = None if self.retarget is None else (lambda target, prompts: self.retarget(s, target, prompts))
        return BoundObjective(self.name, lambda batch: self.loss(batch, s), self.source(s), self.inner_epochs(s),
                              self.value_head_lr(s), self.log_z_lr(s), retarget)


# ----------------------------------------------------------------------------- shared pieces
def sequence(x: torch.Tensor) -> torch.Tensor:
    """Per-sequence sums of per-token values: [n, T] -> [n]."""
    return x.sum(-1)


def k3_kl(logq: torch.Tensor, prior_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence k3 estimate of KL(q || pi0): sum_t (e^d - d - 1), d = log pi0 - log q. [n]."""
    d = (prior_logp - logq).masked_fill(~mask, 0.0)
    return (torch.exp(d) - d - 1).sum(-1)


def group_counts(x: torch.Tensor, group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Rows per group, in ``x``'s dtype: Tensor [num_groups]."""
    return group_sum(torch.ones_like(x), group, num_groups)


def weighted_nll(batch: PolicyBatch, log_w: torch.Tensor) -> ObjectiveOutput:
    """Forward KL by weighted maximum likelihood: -sum_i w_i log q(x_i) / P, w self-normalised per prompt."""
    w = group_softmax(log_w.detach(), batch.group, batch.num_groups)
    loss = -(w * sequence(batch.logq)).sum() / batch.num_groups
    sq = group_sum(w ** 2, batch.group, batch.num_groups)
    ess = torch.where(sq > 0, 1.0 / sq, 0.0)  # Kish ESS per prompt; 0 for a prompt with no mass
    return ObjectiveOutput(loss, {"ess": float(ess.mean())})
