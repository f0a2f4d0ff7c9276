"""Aggregation of runs: one row per run (``results.csv``), mean and std per method."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from .runs import RunRecord

__all__ = [
    "DEFAULT_METRICS",
    "available_metrics",
    "format_mean_std",
    "results_frame",
    "summarize",
]

# Metric names as logged by the training app (``test/<name>``), in display order.
DEFAULT_METRICS = ("acc", "nll", "ece", "auroc", "logloss", "bpb")
ID_COLUMNS = ("role", "method", "seed", "status", "run_dir")


def results_frame(records: Sequence[RunRecord]) -> pd.DataFrame:
    """One row per run: identity, status, target hyper-parameters and every metric.

    Metrics are flattened as ``last/<split>/<name>`` (model at the end of training) and
    ``best/<split>/<name>`` (checkpoint chosen on the validation monitor), plus
    ``best/epoch``. Failed runs have ``status="failed"`` and their log tail in ``error``.
    """
    rows = []
    for record in records:
        row: dict[str, object] = {
            "role": record.role,
            "method": record.method,
            "seed": record.seed,
            "status": record.status,
            "run_dir": str(record.run_dir),
        }
        m = record.metrics
        for key in (
            "task",
            "data",
            "student",
            "monitor",
            "wall_time_s",
            "cpu_time_s",
            "num_params",
        ):
            if key in m and not isinstance(m[key], dict | list):
                row[key] = m[key]
        target = m.get("target")
        if isinstance(target, dict):
            row.update({f"target.{k}": v for k, v in target.items() if _is_scalar(v)})
        if m.get("teacher_checkpoint"):
            row["teacher_checkpoint"] = m["teacher_checkpoint"]
        for which in ("last", "best"):
            for name, value in (m.get(which) or {}).items():
                if _is_scalar(value):
                    row[f"{which}/{name}"] = value
        row["error"] = _last_line(record.error) if not record.ok else ""
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=list(ID_COLUMNS))
    frame["seed"] = frame["seed"].astype("Int64")
    return frame


def available_metrics(
    frame: pd.DataFrame, split: str = "test", metrics: Sequence[str] = DEFAULT_METRICS
) -> list[str]:
    """The names in ``metrics`` that the frame has for ``split`` (last or best), in order."""
    return [
        name
        for name in metrics
        if f"last/{split}/{name}" in frame.columns or f"best/{split}/{name}" in frame.columns
    ]


def summarize(
    frame: pd.DataFrame,
    columns: Sequence[str],
    *,
    methods: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Mean, sample standard deviation (ddof=1) and count over seeds of each method.

    Only finished runs with ``role == "method"`` count. Returns one row per method (in the
    order of ``methods``, else of first appearance) and columns ``(column, stat)`` with
    ``stat`` in ``mean``, ``std``, ``n``. ``std`` is NaN for a single seed:
    ``std = sqrt(sum_i (x_i - mean)^2 / (n - 1))``.
    """
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"columns {missing} are not in the results; available: {list(frame.columns)}"
        )
    done = frame[(frame["status"] == "ok") & (frame["role"] == "method")]
    order = list(methods) if methods is not None else list(dict.fromkeys(frame["method"]))
    stats: dict[tuple[str, str], list[float]] = {}
    for column in columns:
        values = pd.to_numeric(done[column], errors="coerce")
        grouped = values.groupby(done["method"], sort=False)
        mean, std, count = grouped.mean(), grouped.std(ddof=1), grouped.count()
        stats[(column, "mean")] = [mean.get(m, math.nan) for m in order]
        stats[(column, "std")] = [std.get(m, math.nan) for m in order]
        stats[(column, "n")] = [int(count.get(m, 0)) for m in order]
    result = pd.DataFrame(stats, index=pd.Index(order, name="method"))
    result.columns = pd.MultiIndex.from_tuples(result.columns, names=["column", "stat"])
    return result


def format_mean_std(mean: float, std: float, digits: int = 4) -> str:
    """``"0.9712 ± 0.0031"``; only the mean when std is NaN (one seed); ``"–"`` for no value."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _is_scalar(value: object) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""
