"""Language models: the CausalLM wrapper and its Vocabulary, the embedded default model, tiny test models.

The embedded model with its reward, as a ready target, is ``bayes_rlhf.demo``.
"""

from bayes_rlhf.models.causal_lm import CausalLM, LMState, load_model
from bayes_rlhf.models.completions import Completions
from bayes_rlhf.models.default_model import DEFAULT_PROMPTS, default_lm
from bayes_rlhf.models.vocabulary import Vocabulary

__all__ = ["CausalLM", "LMState", "Completions", "Vocabulary", "load_model", "default_lm", "DEFAULT_PROMPTS"]
