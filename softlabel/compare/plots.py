"""Figures: reliability diagrams, metric-by-method bars with error bars, training curves.

Drawn with matplotlib's object API (``matplotlib.figure.Figure``): no pyplot, no GUI
backend, safe in worker processes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ._io import atomic_write
from .calibration import ReliabilityBins
from .table import summarize

__all__ = ["plot_curves", "plot_metric_bars", "plot_reliability"]

_LOWER_IS_BETTER = {"nll", "ppl", "bpb", "ece", "logloss", "loss", "loss_epoch"}


def _figure(n_panels: int, panel_size: tuple[float, float] = (4.0, 3.4), max_cols: int = 3):
    from matplotlib.figure import Figure

    cols = min(n_panels, max_cols)
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(panel_size[0] * cols, panel_size[1] * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _save(fig, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def plot_reliability(
    bins_by_method: Mapping[str, ReliabilityBins], path: str | os.PathLike, *, binary: bool = False
) -> Path:
    """One reliability diagram per method: accuracy per confidence bin against the diagonal.

    Bars show the observed accuracy (binary: frequency of y = 1) of each bin; the hatched
    red part is the gap to the bin's mean confidence; the title carries the ECE.
    """
    if not bins_by_method:
        raise ValueError("bins_by_method is empty: no method has saved test predictions")
    fig, axes = _figure(len(bins_by_method), (3.4, 3.4), max_cols=4)
    for ax, (method, bins) in zip(axes, bins_by_method.items()):
        width = np.diff(bins.edges)
        left = bins.edges[:-1]
        filled = bins.count > 0
        accuracy = np.where(filled, bins.accuracy, 0.0)
        confidence = np.where(filled, bins.confidence, 0.0)
        ax.bar(
            left,
            accuracy,
            width=width,
            align="edge",
            color="#4C72B0",
            edgecolor="white",
            label="accuracy" if not binary else "fraction positive",
        )
        ax.bar(
            left[filled],
            (confidence - accuracy)[filled],
            bottom=accuracy[filled],
            width=width[filled],
            align="edge",
            color="none",
            edgecolor="#C44E52",
            hatch="//",
            label="gap to confidence",
        )
        ax.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("predicted P(y=1)" if binary else "confidence")
        ax.set_ylabel("fraction positive" if binary else "accuracy")
        ax.set_title(f"{method}\nECE = {bins.ece:.4f}, n = {int(bins.count.sum())}", fontsize=10)
    axes[0].legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def plot_metric_bars(
    frame: pd.DataFrame,
    metrics: Sequence[str],
    path: str | os.PathLike,
    *,
    split: str = "test",
    methods: Sequence[str] | None = None,
) -> Path:
    """One panel per metric: mean over seeds per method, error bars = sample std.

    Two bars per method: the validation-selected checkpoint (``best``) and the last epoch.
    """
    if not metrics:
        raise ValueError("metrics is empty: nothing to plot")
    fig, axes = _figure(len(metrics))
    for ax, name in zip(axes, metrics):
        columns = [c for c in (f"best/{split}/{name}", f"last/{split}/{name}") if c in frame]
        stats = summarize(frame, columns, methods=methods)
        x = np.arange(len(stats.index))
        width = 0.8 / max(len(columns), 1)
        for i, column in enumerate(columns):
            label = "val-selected" if column.startswith("best/") else "last epoch"
            ax.bar(
                x + (i - (len(columns) - 1) / 2) * width,
                stats[(column, "mean")],
                yerr=stats[(column, "std")].fillna(0.0),
                width=width,
                capsize=3,
                label=label,
            )
        ax.set_xticks(x, list(stats.index), rotation=30, ha="right")
        arrow = "lower is better" if name in _LOWER_IS_BETTER else "higher is better"
        ax.set_title(f"{split}/{name} ({arrow})", fontsize=10)
        _zoom(ax, stats, columns)
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def _zoom(ax, stats: pd.DataFrame, columns: Sequence[str]) -> None:
    """Start the y axis near the data (differences of 0.5% accuracy must be visible)."""
    low = [stats[(c, "mean")] - stats[(c, "std")].fillna(0.0) for c in columns]
    high = [stats[(c, "mean")] + stats[(c, "std")].fillna(0.0) for c in columns]
    lo, hi = np.nanmin(pd.concat(low)), np.nanmax(pd.concat(high))
    if np.isfinite(lo) and np.isfinite(hi):
        pad = max((hi - lo) * 0.3, abs(hi) * 0.01, 1e-6)
        ax.set_ylim(max(lo - pad, 0.0) if lo >= 0 else lo - pad, hi + pad)


def plot_curves(curves: Mapping[str, pd.DataFrame], path: str | os.PathLike) -> Path:
    """One panel per logged metric: its per-epoch mean over seeds per method, ±1 std band."""
    columns = list(
        dict.fromkeys(
            c for frame in curves.values() for c in frame.columns if not c.endswith(":std")
        )
    )
    if not columns:
        raise ValueError("curves hold no metric: no run has a metrics.csv with epochs")
    fig, axes = _figure(len(columns))
    for ax, column in zip(axes, columns):
        for method, frame in curves.items():
            if column not in frame:
                continue
            epochs = frame.index.to_numpy() + 1
            mean = frame[column].to_numpy(dtype=float)
            std = frame[f"{column}:std"].to_numpy(dtype=float)
            (line,) = ax.plot(epochs, mean, marker="o", markersize=3, label=method)
            band = np.nan_to_num(std)
            ax.fill_between(epochs, mean - band, mean + band, color=line.get_color(), alpha=0.15)
        ax.set_xlabel("epoch")
        ax.set_title(f"{column} (mean over seeds)", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(fig, path)
