"""Token-level metrics of a causal language model (torchmetrics), over non-ignored tokens.

``nll``: mean next-token negative log-likelihood ``-log softmax(z_t)[y_t]`` in nats;
``ppl``: perplexity ``exp(nll)`` of the same tokens (not a mean of per-batch perplexities);
``acc``: next-token accuracy ``argmax z_t == y_t``.
Each takes shifted logits ``(..., V)`` and targets ``(...)`` with ``ignore_index`` marking
padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

__all__ = ["TokenAccuracy", "TokenNLL", "TokenPerplexity", "build_lm_metrics"]


def _kept(logits: Tensor, target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    logits = logits.reshape(-1, logits.shape[-1])
    target = target.reshape(-1)
    keep = target != ignore_index
    return logits[keep], target[keep].long()


class TokenNLL(MeanMetric):
    """Mean ``-log softmax(z)[y]`` over the non-ignored tokens seen."""

    def __init__(self, ignore_index: int = -100, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ignore_index = ignore_index

    def update(self, logits: Tensor, target: Tensor) -> None:  # type: ignore[override]
        kept, labels = _kept(logits, target, self.ignore_index)
        if labels.numel():
            super().update(F.cross_entropy(kept.float(), labels, reduction="none"))


class TokenPerplexity(TokenNLL):
    """``exp`` of the mean token NLL (the corpus perplexity of the tokens seen)."""

    def compute(self) -> Tensor:
        return torch.exp(super().compute())


class TokenAccuracy(MulticlassAccuracy):
    """Next-token accuracy: ``argmax z == y`` over the non-ignored tokens (micro average)."""

    def __init__(self, num_classes: int, ignore_index: int = -100, **kwargs) -> None:
        super().__init__(num_classes=num_classes, average="micro", **kwargs)
        self.token_ignore_index = ignore_index

    def update(self, logits: Tensor, target: Tensor) -> None:  # type: ignore[override]
        kept, labels = _kept(logits, target, self.token_ignore_index)
        if labels.numel():
            super().update(kept.argmax(dim=-1), labels)


def build_lm_metrics(vocab_size: int, ignore_index: int = -100) -> MetricCollection:
    """``{nll, ppl, acc}`` for a vocabulary of ``vocab_size`` token ids."""
    return MetricCollection(
        {
            "nll": TokenNLL(ignore_index),
            "ppl": TokenPerplexity(ignore_index),
            "acc": TokenAccuracy(vocab_size, ignore_index),
        },
        compute_groups=False,
    )
