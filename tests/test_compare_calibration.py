"""Reliability bins and ECE: a hand example and torchmetrics as the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from softlabel.compare import load_predictions, reliability_bins
from softlabel.compare.plots import plot_reliability


def test_hand_example_two_bins() -> None:
    # confidences 0.9, 0.8, 0.6, 0.7 -> bins [0.5, 1.0): [0.6, 0.7] and [0.8, 0.9] correct? 1,1,0,1
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    target = np.array([0, 1, 1, 1])
    bins = reliability_bins(probs, target, n_bins=2)
    assert list(bins.count) == [0, 4]
    assert bins.confidence[1] == pytest.approx(0.75)
    assert bins.accuracy[1] == pytest.approx(0.75)
    assert bins.ece == pytest.approx(0.0)
    bins4 = reliability_bins(probs, target, n_bins=4)  # [0.5, 0.75): 0.6, 0.7 ; [0.75, 1]: 0.8, 0.9
    assert list(bins4.count) == [0, 0, 2, 2]
    # |0.5 - 0.65| * 2/4 + |1.0 - 0.85| * 2/4 = 0.15
    assert bins4.ece == pytest.approx(0.15)


@pytest.mark.parametrize("binary", [False, True])
def test_ece_matches_torchmetrics(binary: bool) -> None:
    from torchmetrics.classification import BinaryCalibrationError, MulticlassCalibrationError

    rng = np.random.default_rng(0)
    if binary:
        probs = rng.uniform(size=500)
        target = (rng.uniform(size=500) < probs**1.5).astype(np.int64)
        reference = BinaryCalibrationError(n_bins=15, norm="l1")
    else:
        logits = rng.normal(size=(500, 5)) * 2
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        target = rng.integers(0, 5, size=500)
        reference = MulticlassCalibrationError(num_classes=5, n_bins=15, norm="l1")
    expected = reference(torch.tensor(probs, dtype=torch.float64), torch.tensor(target)).item()
    assert reliability_bins(probs, target, 15).ece == pytest.approx(expected, abs=1e-6)


def test_bad_input_raises(tmp_path: Path) -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    with pytest.raises(ValueError, match="n_bins"):
        reliability_bins(probs, np.array([0, 1]), n_bins=0)
    with pytest.raises(ValueError, match="target must have shape"):
        reliability_bins(probs, np.array([0, 1, 1]))
    with pytest.raises(ValueError, match=r"target labels must be in \[0, 1\]"):
        reliability_bins(probs, np.array([0, 2]))
    with pytest.raises(ValueError, match="probabilities"):
        reliability_bins(probs * 2, np.array([0, 1]))
    with pytest.raises(FileNotFoundError, match="predictions file"):
        load_predictions(tmp_path / "none.npz")
    np.savez(tmp_path / "p.npz", probs=probs)
    with pytest.raises(ValueError, match=r"lacks arrays \['target'\]"):
        load_predictions(tmp_path / "p.npz")


def test_reliability_plot_is_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(3), size=100)
    target = rng.integers(0, 3, size=100)
    np.savez(tmp_path / "p.npz", probs=probs, target=target)
    bins = {"hard": reliability_bins(*load_predictions(tmp_path / "p.npz"))}
    path = plot_reliability(bins, tmp_path / "plots" / "rel.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind
