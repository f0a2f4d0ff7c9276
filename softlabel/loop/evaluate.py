"""Per-version metrics: quality on a chunk, and flips against the previous version.

Binary: ``auroc``, ``logloss``, ``ece`` (15-bin L1), ``acc``. Multiclass: ``acc``, ``nll``,
``ece``. Both: ``nfr`` (negative flip rate) and ``err`` (error-reduction rate) against the
previous version on the same samples (see :mod:`softlabel.loop.flips`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from softlabel.loop.flips import ErrorReductionRate, NegativeFlipRate
from softlabel.loop.stream import Chunk, ChunkDataset

__all__ = ["PRIMARY_METRICS", "chunk_metrics", "predict_logits", "probabilities"]

#: the metrics reported per task, in table order
PRIMARY_METRICS = {
    "binary": ("auroc", "logloss", "ece", "nfr", "err"),
    "multiclass": ("acc", "nll", "ece", "nfr", "err"),
}


@torch.no_grad()
def predict_logits(model: nn.Module, chunk: Chunk, task: str, batch_size: int = 4096) -> Tensor:
    """The model's logits on every sample of ``chunk``, in chunk order (eval mode, no grad)."""
    was_training = model.training
    model.eval()
    dataset = ChunkDataset(chunk, task)
    device = next(iter(model.parameters())).device
    outputs = [
        model(dataset.x[i : i + batch_size].to(device)).cpu()
        for i in range(0, len(dataset), batch_size)
    ]
    model.train(was_training)
    logits = torch.cat(outputs)
    return logits.reshape(len(dataset)) if task == "binary" else logits


def probabilities(logits: Tensor, task: str) -> Tensor:
    """``sigmoid`` (binary) or ``softmax`` over the last dimension (multiclass)."""
    return torch.sigmoid(logits) if task == "binary" else torch.softmax(logits, dim=-1)


def chunk_metrics(
    logits: Tensor, previous_logits: Tensor | None, chunk: Chunk, task: str, num_classes: int
) -> dict[str, float]:
    """Quality metrics of ``logits`` on ``chunk``, plus ``nfr``/``err`` against ``previous_logits``."""
    from softlabel.modules.metrics import build_metrics

    target = ChunkDataset(chunk, task).y
    metrics = build_metrics(task, num_classes if task == "multiclass" else 2)
    metrics.update(logits, target)
    values = {name: float(value) for name, value in metrics.compute().items()}
    values["nfr"] = values["err"] = math.nan
    if previous_logits is not None:
        for name, metric in (
            ("nfr", NegativeFlipRate(task=task)),
            ("err", ErrorReductionRate(task=task)),
        ):
            metric.update(probabilities(logits, task), probabilities(previous_logits, task), target)
            values[name] = float(metric.compute())
    return values
