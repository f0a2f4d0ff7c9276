"""Evaluation metrics, from torchmetrics, all updated with ``(logits, target)``.

Multiclass (K classes): ``acc`` (top-1), ``acc_top5`` (when K > 5), ``nll`` (mean
cross-entropy of the raw logits, ``-log softmax(z)_y``), ``ece`` (15-bin L1 expected
calibration error of ``softmax(z)``).
Binary (one logit per example): ``acc`` (threshold 0.5 on ``sigmoid(z)``), ``auroc``,
``logloss`` (mean binary cross-entropy of the logits), ``ece`` (15-bin L1 on ``sigmoid(z)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryCalibrationError,
    MulticlassAccuracy,
    MulticlassCalibrationError,
)

__all__ = ["MeanBinaryCrossEntropy", "MeanCrossEntropy", "build_metrics", "monitor_for"]

ECE_BINS = 15


class MeanCrossEntropy(MeanMetric):
    """Mean negative log-likelihood ``-log softmax(z)_y`` over all examples seen."""

    def update(self, logits: Tensor, target: Tensor) -> None:  # type: ignore[override]
        super().update(F.cross_entropy(logits.float(), target.long(), reduction="none"))


class MeanBinaryCrossEntropy(MeanMetric):
    """Mean binary log-loss ``-[y log s(z) + (1-y) log(1-s(z))]`` over all examples seen."""

    def update(self, logits: Tensor, target: Tensor) -> None:  # type: ignore[override]
        values = F.binary_cross_entropy_with_logits(
            logits.float(), target.float(), reduction="none"
        )
        super().update(values)


class _SoftmaxAccuracy(MulticlassAccuracy):
    def update(self, logits: Tensor, target: Tensor) -> None:  # type: ignore[override]
        super().update(torch.softmax(logits.float(), dim=-1), target.long())


class _SoftmaxCalibrationError(MulticlassCalibrationError):
    def update(self, logits: Tensor, target: Tensor) -> None:  # type: ignore[override]
        super().update(torch.softmax(logits.float(), dim=-1), target.long())


class _SigmoidAccuracy(BinaryAccuracy):
    def update(self, logits: Tensor, target: Tensor) -> None:  # type: ignore[override]
        super().update(torch.sigmoid(logits.float()), target.long())


class _SigmoidAUROC(BinaryAUROC):
    def update(self, logits: Tensor, target: Tensor) -> None:  # type: ignore[override]
        super().update(torch.sigmoid(logits.float()), target.long())


class _SigmoidCalibrationError(BinaryCalibrationError):
    def update(self, logits: Tensor, target: Tensor) -> None:  # type: ignore[override]
        super().update(torch.sigmoid(logits.float()), target.long())


def build_metrics(task: str, num_classes: int) -> MetricCollection:
    """The metric collection for ``task`` ("multiclass" with ``num_classes`` or "binary").

    Metrics receive raw logits; each converts to probabilities itself (softmax or sigmoid),
    so logits that happen to lie in [0, 1] are never mistaken for probabilities.
    """
    if task == "multiclass":
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2 for multiclass, got {num_classes!r}")
        metrics = {
            "acc": _SoftmaxAccuracy(num_classes=num_classes, average="micro"),
            "nll": MeanCrossEntropy(),
            "ece": _SoftmaxCalibrationError(num_classes=num_classes, n_bins=ECE_BINS, norm="l1"),
        }
        if num_classes > 5:
            metrics["acc_top5"] = _SoftmaxAccuracy(
                num_classes=num_classes, top_k=5, average="micro"
            )
    elif task == "binary":
        metrics = {
            "acc": _SigmoidAccuracy(),
            "auroc": _SigmoidAUROC(),
            "logloss": MeanBinaryCrossEntropy(),
            "ece": _SigmoidCalibrationError(n_bins=ECE_BINS, norm="l1"),
        }
    else:
        raise ValueError(f"task must be 'multiclass' or 'binary', got {task!r}")
    return MetricCollection(metrics, compute_groups=False)


def monitor_for(task: str) -> str:
    """The validation metric used for model selection: ``val/nll`` or ``val/logloss``."""
    if task not in ("multiclass", "binary"):
        raise ValueError(f"task must be 'multiclass' or 'binary', got {task!r}")
    return "val/nll" if task == "multiclass" else "val/logloss"
