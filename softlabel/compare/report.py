"""Write a comparison's outputs: ``results.csv``, ``summary.md`` and ``plots/*.png``."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ._io import atomic_write, atomic_write_text
from .calibration import ReliabilityBins, reliability_bins
from .curves import mean_curves
from .differences import (
    SEEDS_ONLY,
    Differences,
    StatsSettings,
    check_baseline,
    paired_differences,
)
from .plots import plot_curves, plot_metric_bars, plot_reliability
from .predictions import Predictions, run_predictions
from .runs import PREDICTIONS_FILES, RunRecord
from .table import DEFAULT_METRICS, available_metrics, format_mean_std, results_frame, summarize

__all__ = ["Report", "best_on_validation", "method_reliability", "summary_markdown", "write_report"]


@dataclass
class Report:
    """What :func:`write_report` wrote (plots that could not be drawn are absent), and the
    problems it met."""

    results: Path
    summary: Path
    plots: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    differences: Path | None = None
    #: failed runs, unusable prediction files, refused pairings (the command exits non-zero)
    problems: list[str] = field(default_factory=list)
    runs: int = 0
    failed: int = 0

    def problem_line(self) -> str:
        """One line saying what went wrong ("" when nothing did), for a command's last line."""
        if not self.problems:
            return ""
        other = len(self.problems) - self.failed
        parts = [f"{self.failed} of {self.runs} runs failed"] if self.failed else []
        if other:
            parts.append(f"{other} other problem{'s' if other > 1 else ''}")
        return f"error: {', '.join(parts)}; see {self.summary}"


def method_reliability(
    records: Sequence[RunRecord],
    n_bins: int = 15,
    checkpoint: str = "best",
    predictions: Mapping[Path, Predictions] | None = None,
) -> tuple[dict[str, ReliabilityBins], bool]:
    """Per method, the reliability bins of its finished runs' pooled test predictions.

    Reads the test predictions of ``checkpoint`` (``best``: ``predictions_test.npz``, the
    val-selected weights; ``last``: ``predictions_test_last.npz``, the final weights; arrays
    ``probs``, ``target``) in each run directory, or takes them from ``predictions`` (by run
    directory, as :func:`~softlabel.compare.predictions.run_predictions` returns them);
    methods with no usable file are left out. Also returns whether the task is binary.
    """
    if predictions is None:
        predictions, _ = run_predictions(records, checkpoint)
    pooled: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for record in records:
        saved = predictions.get(record.run_dir)
        if record.ok and record.role == "method" and saved is not None:
            pooled.setdefault(record.method, ([], []))
            pooled[record.method][0].append(saved.probs)
            pooled[record.method][1].append(saved.target)
    binary = any(p[0].ndim == 1 for p, _ in pooled.values())
    bins = {
        method: reliability_bins(np.concatenate(probs), np.concatenate(targets), n_bins)
        for method, (probs, targets) in pooled.items()
    }
    return bins, binary


def _metrics_table(
    frame: pd.DataFrame,
    which: str,
    metrics: Sequence[str],
    methods: Sequence[str],
    split: str = "test",
) -> str:
    columns = [f"{which}/{split}/{m}" for m in metrics if f"{which}/{split}/{m}" in frame.columns]
    if not columns:
        return "_no finished run logged these metrics_\n"
    stats = summarize(frame, columns, methods=methods)
    failed = frame[(frame["status"] != "ok") & (frame["role"] == "method")].groupby("method").size()
    header = ["method", "seeds"] + [c.split("/", 1)[1] for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in stats.index:
        n = int(stats.loc[method, (columns[0], "n")])
        seeds = f"{n}" + (f" ({int(failed[method])} failed)" if method in failed else "")
        cells = [
            format_mean_std(stats.loc[method, (c, "mean")], stats.loc[method, (c, "std")])
            for c in columns
        ]
        lines.append("| " + " | ".join([f"`{method}`", seeds, *cells]) + " |")
    return "\n".join(lines) + "\n"


_HIGHER_IS_BETTER = ("acc", "auroc", "acc_top5")


def best_on_validation(frame: pd.DataFrame, monitor: str, methods: Sequence[str]) -> str | None:
    """The method with the best mean validation ``monitor`` of its selected checkpoints.

    Lower is better, except for accuracy and AUROC. ``None`` when no run logged it.
    """
    column = f"best/{monitor}"
    if column not in frame.columns:
        return None
    means = summarize(frame, [column], methods=methods)[(column, "mean")].dropna()
    if means.empty:
        return None
    higher = monitor.rsplit("/", 1)[-1] in _HIGHER_IS_BETTER
    return str(means.idxmax() if higher else means.idxmin())


def _pretrained_table(
    frame: pd.DataFrame, metrics: Sequence[str], uses: Mapping[str, Sequence[str]]
) -> str:
    """Test metrics of each pretrained model at both checkpoints (validation-selected and
    last epoch): the methods get the one their ``uses`` line names (``best.ckpt`` or
    ``last.ckpt``)."""
    rows = frame[frame["role"] == "pretrained"]
    columns = [
        f"{which}/test/{m}"
        for m in metrics
        for which in ("best", "last")
        if f"{which}/test/{m}" in frame.columns
    ]
    labels = {"best": "selected", "last": "last"}
    header = [
        "name",
        "status",
        "selected on",
        *[f"test {c.split('/')[2]} ({labels[c.split('/')[0]]})" for c in columns],
        "run directory",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in rows.iterrows():
        cells = [("–" if pd.isna(row.get(c)) else f"{row[c]:.4f}") for c in columns]
        lines.append(
            "| "
            + " | ".join(
                [
                    f"`{row['method']}`",
                    row["status"],
                    str(row.get("monitor", "–")),
                    *cells,
                    f"`{row['run_dir']}`",
                ]
            )
            + " |"
        )
    text = "\n".join(lines) + "\n"
    if uses:
        text += "\nCheckpoints passed to the methods:\n\n"
        text += "".join(
            f"- `{m}`: " + ", ".join(f"`{o}`" for o in ov) + "\n" for m, ov in uses.items()
        )
    return text


_CHECKPOINT_NAMES = {"best": "validation-selected checkpoint", "last": "last epoch"}


def _signed(value: float) -> str:
    return f"{value:+.4f}".replace("-", "−")


def _p(value: float) -> str:
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def _differences_table(
    differences: Differences, checkpoint: str, methods: Sequence[str], metrics: Sequence[str]
) -> str:
    """The "Differences vs <baseline>" section for one checkpoint (empty without rows)."""
    frame = differences.frame
    rows = frame[frame["checkpoint"] == checkpoint] if not frame.empty else frame
    if rows.empty:
        return ""
    settings = differences.settings
    names = [m for m in metrics if m in set(rows["metric"])]
    level = f"{settings.level * 100:g}%"
    text = [
        f"## Differences vs `{differences.baseline}` ({_CHECKPOINT_NAMES[checkpoint]})\n",
        f"Cells: method − `{differences.baseline}` on the test split, paired by seed and by "
        f"test example, [{level} interval], p-value. Intervals: percentile bootstrap, "
        f"{settings.n_boot} draws of the seeds and the test examples (`stats.seed` "
        f"{settings.seed}); p: exact McNemar test (acc), paired permutation test (other "
        "metrics). **Bold**: the interval excludes 0; otherwise no detectable difference "
        "at this size. Lower is better for nll, logloss and ece.\n",
    ]
    header = ["method", "seeds", *names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    seed_only = False
    for method in [m for m in methods if m in set(rows["method"])]:
        own = rows[rows["method"] == method].set_index("metric")
        first = own.iloc[0]
        seeds = str(int(first["n_seeds"]))
        if first["dropped_seeds"]:
            seeds += f" (dropped: {first['dropped_seeds']})"
        cells = []
        for name in names:
            if name not in own.index:
                cells.append("–")
                continue
            row = own.loc[name]
            value = _signed(row["difference"])
            if row["ci_low"] > 0 or row["ci_high"] < 0:
                value = f"**{value}**"
            mark = "†" if row["resampled"] == SEEDS_ONLY else ""
            seed_only = seed_only or bool(mark)
            cells.append(
                f"{value}{mark} [{_signed(row['ci_low'])}, {_signed(row['ci_high'])}], "
                f"p {_p(row['p_value'])}"
            )
        lines.append("| " + " | ".join([f"`{method}`", seeds, *cells]) + " |")
    text.append("\n".join(lines) + "\n")
    if seed_only:
        text.append(
            "†: resampled over seeds only (no saved test predictions for this metric or run): "
            "the logged values, p from an exact sign-flip test over seeds.\n"
        )
    text.append(
        "All rows, both checkpoints: `differences.csv`. Seeds and draws are fixed: "
        "aggregating again gives the same numbers.\n"
    )
    return "\n".join(text)


def summary_markdown(
    records: Sequence[RunRecord],
    *,
    title: str = "Comparison",
    methods: Sequence[str] | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    uses: Mapping[str, Sequence[str]] | None = None,
    commands: Sequence[str] = (),
    plots: Mapping[str, str] | None = None,
    notes: Sequence[str] = (),
    headline: str = "best",
    differences: Differences | None = None,
    problems: Sequence[str] = (),
) -> str:
    """The ``summary.md`` text: mean ± std tables, paired differences, pretrained models,
    failures, plots.

    ``headline`` ("best" or "last") is the checkpoint whose test table comes first, followed
    by its "Differences vs <baseline>" table when ``differences`` has rows; both metric
    tables are always shown. ``problems`` are listed first.
    """
    frame = results_frame(records)
    is_method = frame["role"] == "method" if not frame.empty else pd.Series(dtype=bool)
    method_rows = frame[is_method] if not frame.empty else frame
    order = (
        list(methods) if methods is not None else list(dict.fromkeys(method_rows.get("method", [])))
    )
    names = available_metrics(frame, "test", metrics) if not frame.empty else []
    monitor = sorted({str(m) for m in method_rows.get("monitor", pd.Series(dtype=object)).dropna()})
    ok = int((method_rows["status"] == "ok").sum()) if not method_rows.empty else 0
    seeds = sorted({int(s) for s in method_rows.get("seed", pd.Series(dtype="Int64")).dropna()})
    out = [f"# {title}\n"]
    out.append(
        f"{len(method_rows)} runs of {len(order)} methods, {ok} finished, "
        f"{len(method_rows) - ok} failed; seeds {', '.join(map(str, seeds)) or '–'}. "
        "Cells: mean ± sample standard deviation (ddof = 1) over the finished seeds, "
        "on the test split. Nothing is selected on test.\n"
    )
    out.extend(f"**Problem:** {problem}\n" for problem in problems)
    out.extend(f"{note}\n" for note in notes)
    if not frame.empty and names:
        sel = f" (monitor: {', '.join(monitor)})" if monitor else ""
        tables = {
            "best": (f"Validation-selected checkpoint{sel}", "best"),
            "last": ("Last epoch", "last"),
        }
        for key in (headline, *(k for k in tables if k != headline)):
            heading, which = tables[key]
            mark = " (headline)" if key == headline else ""
            out.append(f"## {heading}{mark}\n")
            out.append(_metrics_table(frame, which, names, order))
            if key == headline and differences is not None:
                out.append(_differences_table(differences, key, order, names))
                out.extend(f"{note}\n" for note in dict.fromkeys(differences.notes))
        out.append("## Validation metrics of the selected checkpoint\n")
        picks = {m: best_on_validation(frame, f"val/{m}", order) for m in names}
        picks = {m: p for m, p in picks.items() if p}
        if picks:
            first = monitor[0].split("/", 1)[-1] if monitor else next(iter(picks))
            lines = [f"- best mean `val/{m}`: `{p}`" for m, p in picks.items()]
            out.append(
                "The best method on each validation metric (the choice to make without "
                f"looking at test; each run's checkpoint was selected on `val/{first}`):"
                "\n\n" + "\n".join(lines) + "\n"
            )
        out.append(_metrics_table(frame, "best", names, order, split="val"))
    if not frame.empty and (frame["role"] == "pretrained").any():
        out.append("## Pretrained models (trained once, reused)\n")
        out.append(_pretrained_table(frame, names, uses or {}))
    failed = [r for r in records if not r.ok]
    if failed:
        out.append("## Failed runs\n")
        for record in failed:
            seed = "" if record.seed is None else f", seed {record.seed}"
            log = f" (log: `{record.log}`)" if record.log else ""
            out.append(f"### `{record.method}`{seed}\n\nRun directory: `{record.run_dir}`{log}\n")
            out.append("```text\n" + record.error.strip() + "\n```\n")
    if plots:
        out.append("## Plots\n")
        out.extend(f"![{name}]({rel})\n" for name, rel in plots.items())
    if commands:
        out.append("## Commands\n")
        out.append("```bash\n" + "\n".join(commands) + "\n```\n")
    return "\n".join(out)


def write_report(
    records: Sequence[RunRecord],
    out_dir: str | os.PathLike,
    *,
    title: str = "Comparison",
    methods: Sequence[str] | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    uses: Mapping[str, Sequence[str]] | None = None,
    commands: Sequence[str] = (),
    n_bins: int = 15,
    notes: Sequence[str] = (),
    headline: str = "best",
    baseline: str | None = None,
    stats: StatsSettings | None = None,
) -> Report:
    """Write ``results.csv``, ``differences.csv``, the plots and ``summary.md`` into ``out_dir``.

    ``baseline`` (default: ``hard`` when it is a method, else the first method) is what
    every method is compared with (:func:`~softlabel.compare.differences.paired_differences`,
    settings ``stats``); a baseline that is not a method is refused before anything is
    written. A plot is skipped, with a note in the summary, when its inputs are missing (no
    saved predictions for the reliability diagrams, no ``metrics.csv`` for the curves).
    Failed runs, unusable prediction files and refused pairings are listed in
    :attr:`Report.problems` (and at the top of the summary); the rest is aggregated.
    """
    if headline not in PREDICTIONS_FILES:
        raise ValueError(f"headline must be one of {sorted(PREDICTIONS_FILES)}, got {headline!r}")
    out_dir = Path(out_dir)
    frame = results_frame(records)
    method_rows = frame[frame["role"] == "method"] if not frame.empty else frame
    order = list(methods) if methods is not None else None
    compared = order if order is not None else list(dict.fromkeys(method_rows.get("method", [])))
    if compared:
        baseline = check_baseline(baseline, compared)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = atomic_write(out_dir / "results.csv", lambda tmp: frame.to_csv(tmp, index=False))
    plots: dict[str, Path] = {}
    notes = list(notes)
    problems = [
        f"run {r.run_dir} ({'pretrained' if r.role == 'pretrained' else 'method'} "
        f"`{r.method}`{'' if r.seed is None else f', seed {r.seed}'}) failed"
        for r in records
        if not r.ok
    ]
    finished = (
        frame[(frame["status"] == "ok") & (frame["role"] == "method")] if not frame.empty else frame
    )
    names = available_metrics(frame, "test", metrics) if not frame.empty else []
    if not finished.empty and names:
        present = [
            m for m in (order or dict.fromkeys(finished["method"])) if m in set(finished["method"])
        ]
        plots["metrics"] = plot_metric_bars(
            finished, names, out_dir / "plots" / "metrics.png", methods=present
        )
    curves = mean_curves(records)
    if curves:
        curves = {m: curves[m] for m in (order or list(curves)) if m in curves}
        plots["curves"] = plot_curves(curves, out_dir / "plots" / "curves.png")
    else:
        notes.append("_No training curves: no finished run has a `metrics.csv` log._")
    saved: dict[str, dict[Path, Predictions]] = {}
    for checkpoint in PREDICTIONS_FILES:
        saved[checkpoint], unusable = run_predictions(records, checkpoint)
        problems.extend(unusable)
    # the diagrams show the headline's weights, as the first table does
    bins, binary = method_reliability(records, n_bins, headline, saved[headline])
    weights = "final" if headline == "last" else "validation-selected"
    if bins:
        bins = {m: bins[m] for m in (order or list(bins)) if m in bins}
        plots["reliability"] = plot_reliability(
            bins, out_dir / "plots" / "reliability.png", binary=binary
        )
        notes.append(f"_Reliability diagrams: test predictions of the {weights} weights._")
    else:
        notes.append(
            f"_No reliability diagrams: no finished run saved `{PREDICTIONS_FILES[headline]}` "
            f"(test probabilities and labels of the {weights} weights)._"
        )
    differences = None
    differences_path = None
    if compared and baseline is not None and not finished.empty:
        differences = paired_differences(
            records,
            frame,
            methods=compared,
            baseline=baseline,
            metrics=names,
            settings=stats,
            n_bins=n_bins,
            predictions=saved,
        )
        problems.extend(differences.problems)
        table = differences.frame
        differences_path = atomic_write(
            out_dir / "differences.csv", lambda tmp: table.to_csv(tmp, index=False)
        )
    rel = {name: os.path.relpath(path, out_dir) for name, path in plots.items()}
    text = summary_markdown(
        records,
        title=title,
        methods=order,
        metrics=metrics,
        uses=uses,
        commands=commands,
        plots=rel,
        notes=notes,
        headline=headline,
        differences=differences,
        problems=problems,
    )
    summary = atomic_write_text(out_dir / "summary.md", text)
    failed = sum(not r.ok for r in records)
    return Report(results, summary, plots, notes, differences_path, problems, len(records), failed)
