"""Test metrics recomputed from saved predictions under example weights (for resampling).

Each metric of one run is evaluated for a block of weight vectors ``W`` (B, N) at once:
``W[b, i]`` is how often test example ``i`` is in resample ``b`` (all ones: the test split
as it is). The definitions follow the training app's metrics (``softlabel.modules.metrics``):

- ``acc``: ``argmax_k p_k == y`` (binary: ``p > 0.5`` equals ``y``); ``acc_top5``: ``y``
  among the 5 largest ``p_k``. Mean of the per-example values, weighted by ``W``.
- ``nll`` (multiclass) ``-log p_y`` and ``logloss`` (binary) ``-[y log p + (1 - y) log(1 - p)]``,
  from the saved float32 probabilities: a probability that underflowed to 0 is counted as
  the smallest float32 (``-log 1.4e-45 = 103.3``) and reported (:attr:`Summed.floored`).
- ``ece``: 15-bin L1 calibration error as :mod:`softlabel.compare.calibration`,
  ``sum_j |sum_{i in B_j} w_i (o_i - c_i)| / sum_i w_i`` (o: outcome, c: confidence).
- ``auroc`` (binary): the weighted Mann-Whitney statistic, ties counted 1/2.

:class:`PairedMetrics` packs a method run and a baseline run for the differences, and for
the paired permutation test's mixtures of their predictions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from .calibration import bin_index, confidence_and_outcome
from .predictions import Predictions

__all__ = ["EXAMPLE_METRICS", "Auroc", "PairedMetrics", "Summed", "example_metric"]

#: Metrics with a per-example form, by task.
EXAMPLE_METRICS = {
    "multiclass": ("acc", "acc_top5", "nll", "ece"),
    "binary": ("acc", "auroc", "logloss", "ece"),
}
_FLOOR = float(np.finfo(np.float32).smallest_subnormal)


@dataclass(frozen=True)
class Summed:
    """A metric ``g(W @ M) / sum(W)``: ``M`` (N, J) per-example terms; ``g`` sums the J
    columns, of their absolute values when ``absolute`` (ECE's bins)."""

    matrix: np.ndarray
    absolute: bool = False
    floored: int = 0

    def reduce(self, sums: np.ndarray, total: np.ndarray | float) -> np.ndarray:
        """The metric from the weighted column sums ``W @ M`` (B, J) and ``sum(W)``."""
        return (np.abs(sums) if self.absolute else sums).sum(axis=1) / total

    def value(self, weights: np.ndarray) -> np.ndarray:
        return self.reduce(weights @ self.matrix, weights.sum(axis=1))


@dataclass(frozen=True)
class Auroc:
    """Binary AUROC of ``scores`` (P(y=1)) against ``target`` (0/1)."""

    scores: np.ndarray
    target: np.ndarray

    def value(self, weights: np.ndarray) -> np.ndarray:
        order = np.argsort(self.scores, kind="stable")
        ordered = self.scores[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        positive = self.target[order].astype(np.float64)
        w = weights[:, order]
        pos = np.add.reduceat(w * positive, starts, axis=1)
        neg = np.add.reduceat(w * (1.0 - positive), starts, axis=1)
        below = np.cumsum(neg, axis=1) - neg
        with np.errstate(invalid="ignore", divide="ignore"):
            return (pos * (below + 0.5 * neg)).sum(axis=1) / (pos.sum(axis=1) * neg.sum(axis=1))

    def mixed(self, other: Auroc, swap: np.ndarray) -> np.ndarray:
        """AUROC when ``other``'s scores replace this run's where ``swap`` is true (B, N)."""
        ranks = rankdata(np.where(swap, other.scores, self.scores), axis=1)
        positive = self.target == 1
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            return (ranks[:, positive].sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


class PairedMetrics:
    """Several metrics of one method run and one baseline run on the same test examples,
    packed so that a block of resamples costs one matrix product.

    :meth:`deltas` gives ``metric(method) - metric(baseline)`` under example weights;
    :meth:`permuted` the same difference when the two runs' predictions are swapped on the
    examples where ``swap`` is true (the paired permutation test). For a mean of
    per-example terms the swap flips the sign of the per-example difference ``d_i``:
    ``sum_i (1 - 2 s_i) d_i / N``; for ECE the swapped bin sums are
    ``sum(M) + S @ (M' - M)`` and ``sum(M') - S @ (M' - M)``.
    """

    def __init__(self, forms: dict[str, tuple[Summed | Auroc, Summed | Auroc]]) -> None:
        self.names = list(forms)
        self.forms = forms
        boot, perm = [], []
        self._boot: dict[str, tuple[slice, ...]] = {}
        self._perm: dict[str, slice] = {}
        at_boot = at_perm = 0
        for name, (method, baseline) in forms.items():
            if not isinstance(method, Summed) or not isinstance(baseline, Summed):
                continue
            width = method.matrix.shape[1]
            change = baseline.matrix - method.matrix
            self._perm[name] = slice(at_perm, at_perm + width)
            perm.append(change)
            at_perm += width
            if method.absolute:
                boot += [method.matrix, baseline.matrix]
                self._boot[name] = (
                    slice(at_boot, at_boot + width),
                    slice(at_boot + width, at_boot + 2 * width),
                )
                at_boot += 2 * width
            else:
                boot.append(-change)
                self._boot[name] = (slice(at_boot, at_boot + width),)
                at_boot += width
        n = next(iter(forms.values()))[0]
        self.size = n.matrix.shape[0] if isinstance(n, Summed) else n.scores.shape[0]
        self._boot_matrix = np.hstack(boot) if boot else None
        self._perm_matrix = np.hstack(perm) if perm else None

    def deltas(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """``metric(method) - metric(baseline)`` for each weight vector (rows of ``weights``)."""
        total = weights.sum(axis=1)
        sums = weights @ self._boot_matrix if self._boot_matrix is not None else None
        out = {}
        for name in self.names:
            method, baseline = self.forms[name]
            parts = self._boot.get(name)
            if parts is None:  # AUROC
                out[name] = method.value(weights) - baseline.value(weights)
            elif len(parts) == 1:
                out[name] = method.reduce(sums[:, parts[0]], total)
            else:
                out[name] = method.reduce(sums[:, parts[0]], total) - baseline.reduce(
                    sums[:, parts[1]], total
                )
        return out

    def permuted(self, swap: np.ndarray) -> dict[str, np.ndarray]:
        """The differences with predictions swapped where ``swap`` (B, N) is true."""
        moved = (
            swap.astype(np.float64) @ self._perm_matrix if self._perm_matrix is not None else None
        )
        out = {}
        for name in self.names:
            method, baseline = self.forms[name]
            part = self._perm.get(name)
            if part is None:  # AUROC
                out[name] = method.mixed(baseline, swap) - baseline.mixed(method, swap)
                continue
            change = moved[:, part]  # S @ (M_baseline - M_method)
            first = method.matrix.sum(axis=0) + change
            second = baseline.matrix.sum(axis=0) - change
            out[name] = method.reduce(first, self.size) - baseline.reduce(second, self.size)
        return out


def example_metric(name: str, predictions: Predictions, n_bins: int = 15) -> Summed | Auroc:
    """The resampling form of metric ``name`` for one run's ``predictions``."""
    probs, target = predictions.probs, predictions.target
    task = "binary" if predictions.binary else "multiclass"
    if name not in EXAMPLE_METRICS[task]:
        raise ValueError(
            f"metric {name!r} has no per-example form for a {task} task; "
            f"allowed: {list(EXAMPLE_METRICS[task])}"
        )
    if name == "ece":
        confidence, outcome = confidence_and_outcome(probs, target)
        terms = np.zeros((len(target), n_bins))
        terms[np.arange(len(target)), bin_index(confidence, n_bins)] = outcome - confidence
        return Summed(terms, absolute=True)
    if name == "auroc":
        return Auroc(probs, target)
    if name == "acc":
        hit = (probs > 0.5) == (target == 1) if task == "binary" else probs.argmax(axis=1) == target
        return Summed(hit.astype(np.float64)[:, None])
    if name == "acc_top5":
        if probs.shape[1] <= 5:
            return Summed(np.ones((len(target), 1)))
        top = np.argpartition(-probs, 4, axis=1)[:, :5]
        return Summed((top == target[:, None]).any(axis=1).astype(np.float64)[:, None])
    if task == "binary":  # logloss
        p = np.where(target == 1, probs, 1.0 - probs)
    else:  # nll
        p = probs[np.arange(len(target)), target]
    floored = int(np.count_nonzero(p < _FLOOR))
    return Summed(-np.log(np.maximum(p, _FLOOR))[:, None], floored=floored)
