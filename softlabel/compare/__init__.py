"""Compare training methods over seeds: run them, aggregate the runs, tables and plots.

Pure aggregation (no Lightning): :func:`load_runs` reads run directories,
:func:`results_frame` makes one row per run, :func:`summarize` the mean and std per
method, :func:`paired_differences` each method against a baseline with intervals and
p-values (:func:`compare_predictions` for predictions in memory), :func:`write_report`
writes ``results.csv``, ``differences.csv``, ``summary.md`` and ``plots/``.
:func:`plan_from_config` and :func:`run_plan` train what a comparison config asks for;
the command line is ``softlabel-compare`` (:mod:`softlabel.compare.cli`).
"""

from .calibration import ReliabilityBins, load_predictions, reliability_bins
from .curves import epoch_metrics, mean_curves
from .differences import (
    Differences,
    PairedResult,
    StatsSettings,
    compare_predictions,
    paired_differences,
    seed_differences,
)
from .launch import pending_seeds, run_plan
from .plan import ComparePlan, Job, MethodSpec, PretrainedSpec, plan_from_config
from .predictions import Predictions, PredictionsError, read_predictions
from .report import Report, summary_markdown, write_report
from .runs import RunRecord, find_run_dirs, load_runs, read_metrics, read_run
from .table import format_mean_std, results_frame, summarize

__all__ = [
    "ComparePlan",
    "Differences",
    "Job",
    "MethodSpec",
    "PairedResult",
    "Predictions",
    "PredictionsError",
    "PretrainedSpec",
    "ReliabilityBins",
    "Report",
    "RunRecord",
    "StatsSettings",
    "compare_predictions",
    "epoch_metrics",
    "find_run_dirs",
    "format_mean_std",
    "load_predictions",
    "load_runs",
    "mean_curves",
    "paired_differences",
    "pending_seeds",
    "plan_from_config",
    "read_metrics",
    "read_predictions",
    "read_run",
    "reliability_bins",
    "results_frame",
    "run_plan",
    "seed_differences",
    "summarize",
    "summary_markdown",
    "write_report",
]
