"""The loop's results: ``versions.csv`` (one row per method, seed and version),
``summary.md`` (mean +- std over seeds) and ``versions.png`` (metrics across versions)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from softlabel._io import atomic_write, atomic_write_text
from softlabel.loop.evaluate import PRIMARY_METRICS

__all__ = ["method_summary", "plot_versions", "write_report"]

LOWER_IS_BETTER = {"logloss", "nll", "ece", "nfr"}


def _mean_std(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "n/a"
    if len(values) == 1:
        return f"{values.iloc[0]:.4f}"
    return f"{values.mean():.4f} ± {values.std(ddof=1):.4f}"


def method_summary(frame: pd.DataFrame, task: str, methods: Sequence[str]) -> pd.DataFrame:
    """Per method: each metric averaged over versions >= 2 within a seed, then mean +- std over seeds."""
    later = frame[frame["version"] >= 2]
    columns = [f"{split}/{m}" for split in ("next", "holdout") for m in PRIMARY_METRICS[task]]
    columns = [c for c in columns if c in frame.columns]
    per_seed = later.groupby(["method", "seed"])[columns].mean().reset_index()
    table = {
        m: {c: _mean_std(per_seed.loc[per_seed["method"] == m, c]) for c in columns}
        for m in methods
    }
    return pd.DataFrame.from_dict(table, orient="index")


def _per_version(frame: pd.DataFrame, metric: str, methods: Sequence[str]) -> pd.DataFrame:
    table = frame.groupby(["version", "method"])[metric].mean().unstack("method")
    return table[[m for m in methods if m in table.columns]].map(
        lambda v: "n/a" if pd.isna(v) else f"{v:.4f}"
    )


def _markdown(table: pd.DataFrame, index_name: str) -> str:
    header = [index_name, *map(str, table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in table.iterrows():
        lines.append("| " + " | ".join([str(index), *map(str, row.tolist())]) + " |")
    return "\n".join(lines)


def plot_versions(frame: pd.DataFrame, task: str, methods: Sequence[str], path: Path) -> None:
    """A 2x2 figure: next-chunk and held-out quality, negative flips and error reduction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quality = PRIMARY_METRICS[task][0]
    panels = [f"next/{quality}", f"holdout/{quality}", "next/nfr", "next/err"]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    for ax, metric in zip(axes.flat, panels):
        for method in methods:
            rows = frame[frame["method"] == method].groupby("version")[metric]
            mean, std = rows.mean(), rows.std(ddof=1).fillna(0.0)
            ax.plot(mean.index, mean.values, marker="o", label=method)
            ax.fill_between(mean.index, mean - std, mean + std, alpha=0.2)
        arrow = "lower is better" if metric.split("/")[1] in LOWER_IS_BETTER else "higher is better"
        ax.set_title(f"{metric} ({arrow})")
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("model version")
    axes[0, 0].legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)


def write_report(
    rows: list[dict],
    out_dir: str | os.PathLike[str],
    *,
    task: str,
    methods: Sequence[str],
    title: str,
    plot: bool = True,
) -> pd.DataFrame:
    """Write ``versions.csv``, ``summary.md`` (and ``versions.png``) into ``out_dir``; return the frame."""
    out = Path(out_dir)
    frame = pd.DataFrame(rows).sort_values(["method", "seed", "version"], kind="stable")
    atomic_write_text(out / "versions.csv", frame.to_csv(index=False))
    quality = PRIMARY_METRICS[task][0]
    seeds = sorted(frame["seed"].unique().tolist())
    parts = [
        f"# {title}",
        "",
        f"Task: {task}; methods: {', '.join(methods)}; seeds: {seeds}; versions: 1..{int(frame['version'].max())}.",
        "`next/*`: version t evaluated on chunk t+1 (the data it serves); `holdout/*`: the fixed held-out set.",
        "`nfr`: negative flip rate vs version t-1; `err`: error-reduction rate vs version t-1.",
        "",
        "## Versions 2..N (each metric averaged over versions, mean ± std over seeds)",
        "",
        _markdown(method_summary(frame, task, methods), "method"),
    ]
    for metric in (f"next/{quality}", "next/nfr", "next/err", f"holdout/{quality}"):
        parts += [
            "",
            f"## {metric} per version (mean over seeds)",
            "",
            _markdown(_per_version(frame, metric, methods), "version"),
        ]
    atomic_write_text(out / "summary.md", "\n".join(parts) + "\n")
    if plot:
        plot_versions(frame, task, methods, out / "versions.png")
    return frame
