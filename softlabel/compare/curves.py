"""Training curves: per-epoch metrics from each run's CSV log, averaged over seeds."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .runs import RunRecord

__all__ = ["CURVE_COLUMNS", "epoch_metrics", "mean_curves"]

# Per-epoch columns plotted when present, in this order.
CURVE_COLUMNS = (
    "val/acc",
    "val/nll",
    "val/ece",
    "val/auroc",
    "val/logloss",
    "train/loss",
    "train/loss_epoch",
)


def epoch_metrics(run_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per training epoch of a run, from the first ``**/metrics.csv`` below it.

    Rows of one epoch are merged (the last logged value of each column wins). Epochs with
    no ``train/...`` value are dropped: they are the evaluations run after training (the
    final ``validate``/``test`` calls), not training epochs. Empty when there is no log.
    """
    logs = sorted(Path(run_dir).glob("**/metrics.csv"))
    if not logs:
        return pd.DataFrame()
    raw = pd.read_csv(logs[0])
    if "epoch" not in raw.columns:
        return pd.DataFrame()
    raw = raw.dropna(subset=["epoch"])
    per_epoch = raw.groupby("epoch", sort=True).last()
    train_cols = [c for c in per_epoch.columns if c.startswith("train/")]
    if train_cols:
        per_epoch = per_epoch[per_epoch[train_cols].notna().any(axis=1)]
    per_epoch.index = per_epoch.index.astype(int)
    return per_epoch


def mean_curves(
    records: Sequence[RunRecord], columns: Sequence[str] = CURVE_COLUMNS
) -> dict[str, pd.DataFrame]:
    """Per method: a frame indexed by epoch with ``<column>`` (mean over seeds) and
    ``<column>:std`` (sample std, NaN for one seed) for every column some run logged.

    Only finished runs with ``role == "method"`` count.
    """
    by_method: dict[str, list[pd.DataFrame]] = {}
    for record in records:
        if record.ok and record.role == "method":
            frame = epoch_metrics(record.run_dir)
            if not frame.empty:
                by_method.setdefault(record.method, []).append(frame)
    curves: dict[str, pd.DataFrame] = {}
    for method, frames in by_method.items():
        present = [c for c in columns if any(c in f.columns for f in frames)]
        if not present:
            continue
        stacked = pd.concat([f.reindex(columns=present) for f in frames], keys=range(len(frames)))
        grouped = stacked.groupby(level=1)
        mean = grouped.mean()
        std = grouped.std(ddof=1).add_suffix(":std")
        curves[method] = pd.concat([mean, std], axis=1)
        curves[method].index.name = "epoch"
    return curves
