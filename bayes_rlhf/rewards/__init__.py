"""Rewards.

A reward is either a plain callable ``reward(prompts: list[str], completions: list[str]) ->
sequence of floats`` (TRL's convention), or an object with
``score_batch(lm, prompts, ids, mask) -> Tensor[n]`` working on token ids (``TokenReward``,
``WeightedSum``, ``Constraint``). ``evaluate_reward`` calls either kind and checks the result.
"""

from bayes_rlhf.rewards.base import TokenReward, evaluate_reward, reward_name
from bayes_rlhf.rewards.bradley_terry import BradleyTerryConfig, BradleyTerryReward
from bayes_rlhf.rewards.classifier import ClassifierReward
from bayes_rlhf.rewards.combinators import Constraint, WeightedSum

__all__ = ["TokenReward", "ClassifierReward", "Constraint", "WeightedSum", "BradleyTerryReward",
           "BradleyTerryConfig", "evaluate_reward", "reward_name"]
