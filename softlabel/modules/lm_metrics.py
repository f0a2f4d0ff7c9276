"""Token-level metrics of a causal language model (torchmetrics), over non-ignored tokens.

``nll``: mean next-token negative log-likelihood ``-log softmax(z_t)[y_t]`` in nats;
``ppl``: perplexity ``exp(nll)`` of the same tokens (not a mean of per-batch perplexities);
``acc``: next-token accuracy ``argmax z_t == y_t``;
``bpb``: bits per UTF-8 byte of the scored text, ``sum_t -log2 softmax(z_t)[y_t] / sum_t
bytes(y_t)``, the end-of-document token's bits counted and its bytes 0: unlike a perplexity
per token it compares models with different tokenizers on the same text (the byte-level
language-model literature's measure, e.g. ByT5, Xue et al. 2022).
Each takes shifted logits ``(..., V)`` and targets ``(...)`` with ``ignore_index`` marking
padding.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric, Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from softlabel.data.token_bytes import spells_text, token_bytes

__all__ = [
    "TokenAccuracy",
    "TokenBitsPerByte",
    "TokenNLL",
    "TokenPerplexity",
    "build_lm_metrics",
    "token_byte_lengths",
]


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


class TokenBitsPerByte(Metric):
    """Bits per UTF-8 byte: ``sum -log2 softmax(z)[y] / sum byte_lengths[y]`` over the
    non-ignored tokens seen (``byte_lengths`` (V,): the bytes each id stands for)."""

    full_state_update = False

    def __init__(self, byte_lengths: Tensor, ignore_index: int = -100, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ignore_index = ignore_index
        self.register_buffer("byte_lengths", torch.as_tensor(byte_lengths, dtype=torch.long))
        self.add_state("nats", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("bytes", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor) -> None:  # type: ignore[override]
        kept, labels = _kept(logits, target, self.ignore_index)
        if labels.numel():
            nll = F.cross_entropy(kept.float(), labels, reduction="sum")
            self.nats += nll.to(self.nats.dtype)
            self.bytes += self.byte_lengths.to(labels.device)[labels].sum()

    def compute(self) -> Tensor:
        return self.nats / (math.log(2.0) * self.bytes.to(self.nats.dtype))


def token_byte_lengths(tokenizer: Any) -> Tensor | None:
    """(V,) the UTF-8 bytes each id of ``tokenizer`` stands for, or None (with a warning) when
    its ids do not spell their text exactly (see ``softlabel.data.token_bytes``)."""
    table = token_bytes(tokenizer)
    if not spells_text(tokenizer, table):
        warnings.warn(
            f"bpb is not reported: the ids of {type(tokenizer).__name__} do not spell back the "
            "bytes of their text (e.g. a SentencePiece prefix space)",
            stacklevel=2,
        )
        return None
    return torch.as_tensor([0 if spelled is None else len(spelled) for spelled in table])


def build_lm_metrics(
    vocab_size: int, ignore_index: int = -100, byte_lengths: Tensor | None = None
) -> MetricCollection:
    """``{nll, ppl, acc}`` for a vocabulary of ``vocab_size`` token ids, and ``bpb`` when
    ``byte_lengths`` (the bytes of each id, :func:`token_byte_lengths`) is given."""
    metrics: dict[str, Metric] = {
        "nll": TokenNLL(ignore_index),
        "ppl": TokenPerplexity(ignore_index),
        "acc": TokenAccuracy(vocab_size, ignore_index),
    }
    if byte_lengths is not None:
        metrics["bpb"] = TokenBitsPerByte(byte_lengths, ignore_index)
    return MetricCollection(metrics, compute_groups=False)
