"""Language models: the CausalLM wrapper, the embedded default model, tiny test models."""

from bayes_rlhf.models.causal_lm import CausalLM, LMState, load_model
from bayes_rlhf.models.completions import Completions
from bayes_rlhf.models.default_model import DEFAULT_PROMPTS, default_model
from bayes_rlhf.models.vocabulary import Vocabulary

__all__ = ["CausalLM", "LMState", "Completions", "Vocabulary", "load_model", "default_model", "DEFAULT_PROMPTS"]
