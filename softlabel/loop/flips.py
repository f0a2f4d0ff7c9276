"""Flip metrics between a model version and the version it replaces (torchmetrics).

For each sample, ``c_new`` / ``c_prev`` say whether the new / previous version's
prediction is correct (binary: ``p >= threshold`` vs the 0/1 label; multiclass: argmax).

* negative flip rate ``NFR = #{c_prev and not c_new} / N``: the share of samples the
  previous version got right and the new one gets wrong;
* error-reduction rate ``ERR = (E_prev - E_new) / E_prev`` with ``E = #{not c}``: the
  relative reduction of errors (positive = fewer errors, 1 = no errors left; ``nan`` if
  the previous version made no errors).

States are sums (``dist_reduce_fx="sum"``), so both are exact under DDP.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["ErrorReductionRate", "NegativeFlipRate", "correct_predictions"]

TASKS = ("binary", "multiclass")


def correct_predictions(preds: Tensor, target: Tensor, task: str, threshold: float = 0.5) -> Tensor:
    """Bool tensor: is each prediction right? Binary ``preds`` are probabilities ``(N,)``;
    multiclass ``preds`` are scores ``(N, K)`` (probabilities or logits, argmax is the same).
    """
    if task == "binary":
        if preds.shape != target.shape:
            raise ValueError(
                f"binary preds and target must have the same shape, got {tuple(preds.shape)} and {tuple(target.shape)}"
            )
        if preds.is_floating_point() and preds.numel() and (preds.min() < 0 or preds.max() > 1):
            raise ValueError(
                "binary preds must be probabilities in [0, 1] (apply sigmoid to logits first)"
            )
        return (preds >= threshold) == target.bool()
    if task == "multiclass":
        if preds.ndim != 2 or preds.shape[0] != target.shape[0] or target.ndim != 1:
            raise ValueError(
                f"multiclass preds must be (N, K) and target (N,), got {tuple(preds.shape)} and {tuple(target.shape)}"
            )
        return preds.argmax(dim=-1) == target.long()
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


class _FlipMetric(Metric):
    is_differentiable = False
    higher_is_better: bool | None = None
    full_state_update = False

    def __init__(self, task: str = "binary", threshold: float = 0.5, **kwargs: object) -> None:
        super().__init__(**kwargs)
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
        self.task, self.threshold = task, float(threshold)
        self.add_state(
            "negative_flips", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum"
        )
        self.add_state(
            "previous_errors", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum"
        )
        self.add_state(
            "new_errors", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum"
        )
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, prev_preds: Tensor, target: Tensor) -> None:  # type: ignore[override]
        """Add a batch: the new version's ``preds``, the previous version's ``prev_preds``."""
        if preds.shape != prev_preds.shape:
            raise ValueError(
                f"preds and prev_preds must have the same shape, got {tuple(preds.shape)} and {tuple(prev_preds.shape)}"
            )
        new_ok = correct_predictions(preds, target, self.task, self.threshold)
        prev_ok = correct_predictions(prev_preds, target, self.task, self.threshold)
        self.negative_flips += (prev_ok & ~new_ok).sum()
        self.previous_errors += (~prev_ok).sum()
        self.new_errors += (~new_ok).sum()
        self.total += new_ok.numel()


class NegativeFlipRate(_FlipMetric):
    """``#{previous right, new wrong} / N`` (lower is better)."""

    higher_is_better = False

    def compute(self) -> Tensor:
        if self.total == 0:
            return torch.tensor(float("nan"))
        return self.negative_flips.float() / self.total.float()


class ErrorReductionRate(_FlipMetric):
    """``(E_prev - E_new) / E_prev`` (higher is better; ``nan`` if ``E_prev = 0``)."""

    higher_is_better = True

    def compute(self) -> Tensor:
        if self.previous_errors == 0:
            return torch.tensor(float("nan"))
        return (self.previous_errors - self.new_errors).float() / self.previous_errors.float()
