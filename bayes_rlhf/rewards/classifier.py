"""A transformers sequence-classification model as a reward (a label's logit or log-prob)."""

from __future__ import annotations

from typing import Sequence

import torch

from bayes_rlhf._checks import check_int, is_integer
from bayes_rlhf.errors import ModelLoadError, RewardError


class ClassifierReward:
    """Reward = logit (or log-probability) of one label of a sequence classifier.

    Parameters
    ----------
    model : str, path or ``PreTrainedModel``
        A sequence-classification model, or where to load one from.
    tokenizer : optional
        Needed when ``model`` is a model object.
    label : int or str
        The label index or its name in ``config.label2id``.
    kind : "logit" or "log_prob"
    include_prompt : bool
        Classify ``prompt + completion`` instead of the completion alone.
    """

    def __init__(self, model, tokenizer=None, label: int | str = 1, kind: str = "logit",
                 include_prompt: bool = False, device=None, batch_size: int = 64, name: str | None = None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from bayes_rlhf.models.loading import own_aligned

        batch_size = check_int(batch_size, "ClassifierReward batch_size", 1)
        if kind not in ("logit", "log_prob"):
            raise RewardError(f"ClassifierReward kind must be 'logit' or 'log_prob', got {kind!r}")
        if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
            try:
                tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
                model = own_aligned(AutoModelForSequenceClassification.from_pretrained(model))
            except OSError as exc:
                raise ModelLoadError(f"could not load a sequence classifier from {model!r}: {exc}") from exc
        if tokenizer is None:
            raise RewardError("ClassifierReward needs the classifier's tokenizer when given a model object")
        if isinstance(label, str):
            l2i = getattr(model.config, "label2id", {}) or {}
            if label not in l2i:
                raise RewardError(f"label {label!r} is not one of the classifier's labels {sorted(l2i)}")
            label = int(l2i[label])
        if not is_integer(label) or not 0 <= label < model.config.num_labels:
            raise RewardError(f"label {label!r} out of range for a classifier with {model.config.num_labels} labels; "
                              "give a label name or an index in [0, num_labels)")
        label = int(label)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.tokenizer = model.to(self.device).eval(), tokenizer
        self.label, self.kind, self.include_prompt, self.batch_size = label, kind, include_prompt, batch_size
        self.name = name or f"classifier[{label}].{kind}"

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        texts = [p + c for p, c in zip(prompts, completions)] if self.include_prompt else list(completions)
        out = []
        with torch.no_grad():
            for s in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(texts[s: s + self.batch_size], return_tensors="pt", padding=True,
                                     truncation=True).to(self.device)
                logits = self.model(**enc).logits.double()
                if self.kind == "log_prob":
                    logits = torch.log_softmax(logits, -1)
                out.append(logits[:, self.label].cpu())
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)
