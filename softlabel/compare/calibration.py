"""Reliability diagrams from saved test predictions (NumPy only).

Binning follows torchmetrics' calibration error, so the ECE here matches the ``test/ece``
the training app logs: ``n_bins`` equal-width bins on [0, 1], bin ``j`` holding the
confidences in ``[j/n, (j+1)/n)`` (1.0 in the last bin), and

    ECE = sum_j (|B_j| / N) * |acc(B_j) - conf(B_j)|.

Multiclass: confidence = max_k p_k, "accuracy" = argmax == target.
Binary (probabilities of the positive class, shape (N,)): confidence = p(y=1) and
"accuracy" = the observed frequency of y = 1 in the bin (a calibration curve).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .predictions import read_predictions

__all__ = [
    "ReliabilityBins",
    "bin_index",
    "confidence_and_outcome",
    "load_predictions",
    "reliability_bins",
]


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin mean confidence, accuracy (observed frequency) and count.

    Empty bins hold NaN confidence and accuracy and a count of 0.
    """

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray

    @property
    def ece(self) -> float:
        """Expected calibration error ``sum_j (|B_j|/N) |acc_j - conf_j|``."""
        total = self.count.sum()
        if total == 0:
            return float("nan")
        filled = self.count > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float((self.count[filled] / total * gaps).sum())


def confidence_and_outcome(probs: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Confidence and 0/1 outcome per example (see the module docstring)."""
    probs = np.asarray(probs, dtype=np.float64)
    target = np.asarray(target)
    if probs.ndim not in (1, 2):
        raise ValueError(f"probs must have shape (N,) or (N, K), got {probs.shape}")
    if target.shape != probs.shape[:1]:
        raise ValueError(f"target must have shape ({probs.shape[0]},), got {target.shape}")
    if not np.all(np.isfinite(probs)) or probs.min(initial=0.0) < 0 or probs.max(initial=0.0) > 1:
        raise ValueError("probs must be finite probabilities in [0, 1]")
    if not np.issubdtype(target.dtype, np.integer) and not np.all(target == np.round(target)):
        raise ValueError(f"target must hold integer class labels, got dtype {target.dtype}")
    target = target.astype(np.int64)
    if probs.ndim == 1:
        if np.any((target != 0) & (target != 1)):
            raise ValueError("binary target must be 0 or 1")
        return probs, target.astype(np.float64)
    num_classes = probs.shape[1]
    if target.size and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(f"target labels must be in [0, {num_classes - 1}]")
    return probs.max(axis=1), (probs.argmax(axis=1) == target).astype(np.float64)


def bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """The bin of each confidence: ``j`` for ``[j/n, (j+1)/n)``, 1.0 in the last bin."""
    if not isinstance(n_bins, int) or isinstance(n_bins, bool) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, n_bins - 1)


def reliability_bins(probs: np.ndarray, target: np.ndarray, n_bins: int = 15) -> ReliabilityBins:
    """Bin the predictions by confidence into ``n_bins`` equal-width bins on [0, 1]."""
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    confidence, outcome = confidence_and_outcome(probs, target)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = bin_index(confidence, n_bins)
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=confidence, minlength=n_bins) / count
        mean_acc = np.bincount(index, weights=outcome, minlength=n_bins) / count
    return ReliabilityBins(edges, mean_conf, mean_acc, count)


def load_predictions(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(probs, target)`` from a ``.npz`` file with arrays ``probs`` and ``target``
    (read by :func:`~softlabel.compare.predictions.read_predictions`: never unpickled)."""
    predictions = read_predictions(path)
    return predictions.probs, predictions.target
