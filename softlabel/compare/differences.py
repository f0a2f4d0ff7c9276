"""Paired differences of each method against a baseline, with intervals and p-values.

For a method and the baseline, runs are paired by seed (only seeds where both finished;
the others are dropped and listed), and within a seed by test example (the saved
predictions, ordered by dataset index). The difference of a metric is

    d = (1/S) sum_s [metric(method, s) - metric(baseline, s)]

over the S paired seeds. Its interval is the percentile interval of ``d`` recomputed on
``n_boot`` resamples of the seeds and the test examples, the seed part shrunk so that the
example noise it holds is not counted twice (:func:`~softlabel.compare.stats.combine_draws`);
``p_value`` is the exact McNemar test for accuracy and a paired permutation test (each
(seed, example) pair's two predictions swapped at random, ``n_boot`` times) for the other
metrics. Both examine these runs; the interval also covers the seed-to-seed variation.
A metric the runs did not save predictions for is resampled over seeds only, from the
logged values, with an exact sign-flip test over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .example_metrics import EXAMPLE_METRICS, PairedMetrics, example_metric
from .predictions import Predictions, run_predictions, same_test_set
from .runs import RunRecord
from .stats import (
    combine_draws,
    example_weights,
    mcnemar_exact,
    percentile_interval,
    permutation_pvalue,
    seed_counts,
    sign_flip_pvalue,
    weight_chunks,
)

__all__ = [
    "DIFFERENCE_COLUMNS",
    "Differences",
    "PairedResult",
    "StatsSettings",
    "check_baseline",
    "compare_predictions",
    "default_baseline",
    "paired_differences",
    "seed_differences",
]

DIFFERENCE_COLUMNS = (
    "method",
    "baseline",
    "metric",
    "difference",
    "ci_low",
    "ci_high",
    "p_value",
    "n_seeds",
    "n_examples",
    "checkpoint",
    "resampled",
    "test",
    "seeds",
    "dropped_seeds",
    "n_boot",
    "level",
    "stats_seed",
)
#: ``resampled`` values: seeds and test examples, or seeds only (no saved predictions).
EXAMPLES, SEEDS_ONLY = "seeds x examples", "seeds"
_STATS_KEYS = ("n_boot", "level", "seed")


@dataclass(frozen=True)
class StatsSettings:
    """``stats`` of a comparison config: bootstrap draws, interval level, random seed."""

    n_boot: int = 2000
    level: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.n_boot, bool) or not isinstance(self.n_boot, int) or self.n_boot < 1:
            raise ValueError(f"stats.n_boot must be an int >= 1, got {self.n_boot!r}")
        if (
            isinstance(self.level, bool)
            or not isinstance(self.level, int | float)
            or not 0 < self.level < 1
        ):
            raise ValueError(f"stats.level must be a number in (0, 1), got {self.level!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"stats.seed must be an int >= 0, got {self.seed!r}")

    @classmethod
    def from_config(cls, value: Mapping[str, Any] | None) -> StatsSettings:
        """From the ``stats`` mapping of a config (missing keys take the defaults)."""
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise ValueError(
                f"stats must be a mapping with keys {list(_STATS_KEYS)}, got {value!r}"
            )
        unknown = set(value) - set(_STATS_KEYS)
        if unknown:
            raise ValueError(
                f"stats has unknown keys {sorted(unknown)}; allowed: {list(_STATS_KEYS)}"
            )
        return cls(**{k: value[k] for k in _STATS_KEYS if k in value})


@dataclass
class Differences:
    """The rows of ``differences.csv`` (:data:`DIFFERENCE_COLUMNS`), and what to say about
    them: ``notes`` (dropped seeds, capped NLLs) and ``problems`` (refused pairings)."""

    frame: pd.DataFrame
    baseline: str
    settings: StatsSettings
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def default_baseline(methods: Sequence[str]) -> str:
    """``hard`` when it is among ``methods``, else the first method."""
    if not methods:
        raise ValueError("methods is empty: there is no baseline to compare against")
    return "hard" if "hard" in methods else methods[0]


def check_baseline(baseline: str | None, methods: Sequence[str]) -> str:
    """``baseline`` (or :func:`default_baseline`), refused when it is not a method."""
    if baseline is None:
        return default_baseline(methods)
    if baseline not in methods:
        raise ValueError(
            f"baseline {baseline!r} is not a compared method; methods: {list(methods)}"
        )
    return baseline


def paired_differences(
    records: Sequence[RunRecord],
    frame: pd.DataFrame,
    *,
    methods: Sequence[str],
    baseline: str,
    metrics: Sequence[str],
    settings: StatsSettings | None = None,
    checkpoints: Sequence[str] = ("best", "last"),
    n_bins: int = 15,
    predictions: Mapping[str, Mapping[Path, Predictions]] | None = None,
) -> Differences:
    """Every method against ``baseline``, for each metric and checkpoint (module docstring).

    ``frame`` is :func:`~softlabel.compare.table.results_frame` of ``records`` (the logged
    metrics); ``predictions`` maps a checkpoint to the runs' predictions when already read
    (else they are read here and unreadable files become problems).
    """
    settings = settings or StatsSettings()
    out = Differences(pd.DataFrame(columns=list(DIFFERENCE_COLUMNS)), baseline, settings)
    runs: dict[str, dict[int, RunRecord]] = {}
    duplicated: set[str] = set()
    for record in records:
        if record.ok and record.role == "method" and record.seed is not None:
            by_seed = runs.setdefault(record.method, {})
            if record.seed in by_seed:
                duplicated.add(record.method)
                out.problems.append(
                    f"method {record.method!r} has two runs of seed {record.seed} "
                    f"({by_seed[record.seed].run_dir} and {record.run_dir}): not paired"
                )
            by_seed[record.seed] = record
    if baseline in duplicated or not runs.get(baseline):
        if baseline not in duplicated:
            out.notes.append(f"No differences: the baseline `{baseline}` has no finished run.")
        return out
    rows: list[dict[str, Any]] = []
    for checkpoint in checkpoints:
        if predictions is not None and checkpoint in predictions:
            saved = predictions[checkpoint]
        else:
            saved, problems = run_predictions(records, checkpoint)
            out.problems.extend(problems)
        for method in methods:
            if method == baseline or method in duplicated or not runs.get(method):
                continue
            rows.extend(
                _compare(
                    method, runs[method], baseline, runs[baseline], frame, saved,
                    metrics, checkpoint, settings, n_bins, out,
                )
            )  # fmt: skip
    if rows:
        out.frame = pd.DataFrame(rows, columns=list(DIFFERENCE_COLUMNS))
        out.frame["n_examples"] = out.frame["n_examples"].astype("Int64")
    return out


def _compare(
    method: str,
    method_runs: Mapping[int, RunRecord],
    baseline: str,
    baseline_runs: Mapping[int, RunRecord],
    frame: pd.DataFrame,
    saved: Mapping[Path, Predictions],
    metrics: Sequence[str],
    checkpoint: str,
    settings: StatsSettings,
    n_bins: int,
    out: Differences,
) -> list[dict[str, Any]]:
    seeds = sorted(set(method_runs) & set(baseline_runs))
    dropped = sorted(set(method_runs) ^ set(baseline_runs))
    if dropped and checkpoint == "best":
        missing = ", ".join(
            f"{s} (no `{baseline if s in method_runs else method}` run)" for s in dropped
        )
        out.notes.append(f"`{method}` vs `{baseline}`: seeds dropped from the pairing: {missing}.")
    if not seeds:
        return []
    pairs = [(method_runs[s], baseline_runs[s]) for s in seeds]
    paired = None
    without = [str(r.run_dir) for pair in pairs for r in pair if r.run_dir not in saved]
    if without and len(without) < 2 * len(pairs):
        out.notes.append(
            f"`{method}` vs `{baseline}` ({checkpoint} checkpoint): resampled over seeds only, "
            f"runs without usable saved predictions: {', '.join(without)}."
        )
    if not without:
        # by dataset index when every file has one, else in the order saved
        by_index = all(saved[r.run_dir].index is not None for pair in pairs for r in pair)
        paired = [
            (saved[m.run_dir], saved[b.run_dir])
            if not by_index
            else (saved[m.run_dir].aligned(), saved[b.run_dir].aligned())
            for m, b in pairs
        ]
        for seed, (m, b), (mp, bp) in zip(seeds, pairs, paired):
            reason = same_test_set([mp, bp])
            if reason:
                out.problems.append(
                    f"refused to pair `{method}` with `{baseline}` ({checkpoint} checkpoint): "
                    f"runs {m.run_dir} and {b.run_dir} (seed {seed}) predicted different test "
                    f"sets ({reason})"
                )
                return []
    common = {
        "method": method,
        "baseline": baseline,
        "n_seeds": len(seeds),
        "checkpoint": checkpoint,
        "seeds": " ".join(map(str, seeds)),
        "dropped_seeds": " ".join(map(str, dropped)),
        "n_boot": settings.n_boot,
        "level": settings.level,
        "stats_seed": settings.seed,
    }
    task = "binary" if paired and paired[0][0].binary else "multiclass"
    per_example = [m for m in metrics if paired and m in EXAMPLE_METRICS[task]]
    rows = []
    if per_example:
        assert paired is not None
        results = compare_predictions(paired, per_example, settings, n_bins)
        n_examples = min(mp.target.size for mp, _ in paired)
        for name in per_example:
            result = results[name]
            for run, count in result.floored:
                out.notes.append(
                    f"{name} of run {run}: {count} test examples had probability 0 of their "
                    "label in float32; counted as -log(1.4e-45) = 103.3."
                )
            rows.append(_row(common, name, result, n_examples, EXAMPLES))
    for name in metrics:
        if name in per_example:
            continue
        column = f"{checkpoint}/test/{name}"
        if column not in frame.columns:
            continue
        values = pd.to_numeric(frame[column], errors="coerce")
        by_dir = dict(zip(frame["run_dir"], values))
        d = np.array(
            [
                by_dir.get(str(m.run_dir), math.nan) - by_dir.get(str(b.run_dir), math.nan)
                for m, b in pairs
            ]
        )
        if not np.all(np.isfinite(d)):
            continue
        result = seed_differences(d, settings)
        rows.append(_row(common, name, result, None, SEEDS_ONLY))
    order = {name: i for i, name in enumerate(metrics)}
    return sorted(rows, key=lambda row: order[row["metric"]])


def _row(
    common: dict, metric: str, result: PairedResult, n_examples: int | None, resampled: str
) -> dict:
    """One row of differences.csv: the pairing's ``common`` columns and ``result``."""
    return {
        **common,
        "metric": metric,
        "difference": result.difference,
        "ci_low": result.ci_low,
        "ci_high": result.ci_high,
        "p_value": result.p_value,
        "n_examples": n_examples,
        "resampled": resampled,
        "test": result.test,
    }


@dataclass(frozen=True)
class PairedResult:
    """One metric's paired difference (method - baseline), its interval and p-value, the
    test that gave the p-value, and (run directory, count) of NLLs capped at -log(1.4e-45)."""

    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    test: str
    floored: tuple[tuple[Path, int], ...] = ()


def seed_differences(
    differences: Sequence[float], settings: StatsSettings | None = None
) -> PairedResult:
    """Paired difference from per-seed differences only (``method - baseline`` of each seed,
    e.g. logged metrics): their mean, the seed bootstrap interval and an exact sign-flip
    p-value over seeds (:mod:`softlabel.compare.stats`)."""
    settings = settings or StatsSettings()
    d = np.asarray(differences, dtype=np.float64)
    if d.ndim != 1 or d.size == 0 or not np.all(np.isfinite(d)):
        raise ValueError(
            f"differences must be a non-empty list of finite numbers, got {differences!r}"
        )
    rng = np.random.default_rng(settings.seed)
    draws = combine_draws(d, None, seed_counts(rng, settings.n_boot, d.size))
    low, high = percentile_interval(draws, settings.level)
    p_value = sign_flip_pvalue(d, np.random.default_rng([settings.seed, 1]), settings.n_boot)
    return PairedResult(float(d.mean()), low, high, p_value, "sign-flip over seeds")


def compare_predictions(
    paired: Sequence[tuple[Predictions, Predictions]],
    names: Sequence[str],
    settings: StatsSettings | None = None,
    n_bins: int = 15,
) -> dict[str, PairedResult]:
    """Paired differences from saved predictions: ``paired`` holds one (method, baseline)
    pair per seed, each pair on the same test examples in the same order; ``names`` are
    metrics of :data:`~softlabel.compare.example_metrics.EXAMPLE_METRICS` (module docstring).
    """
    settings = settings or StatsSettings()
    if not paired:
        raise ValueError("paired is empty: no (method, baseline) predictions to compare")
    for seed, (method, baseline) in enumerate(paired):
        reason = same_test_set([method, baseline])
        if reason:
            raise ValueError(
                f"pair {seed} ({method.path} and {baseline.path}) predicted different test "
                f"sets: {reason}"
            )
    n_seeds = len(paired)
    packs = [
        PairedMetrics(
            {n: (example_metric(n, m, n_bins), example_metric(n, b, n_bins)) for n in names}
        )
        for m, b in paired
    ]
    sizes = [pack.size for pack in packs]
    # one test set for all seeds: shared example weights (crossed); else one draw per seed
    crossed = all(not same_test_set([paired[0][1], b]) for _, b in paired[1:])
    n_boot = settings.n_boot
    rng = np.random.default_rng(settings.seed)
    counts = seed_counts(rng, n_boot, n_seeds)
    deltas = {name: np.empty((n_boot, n_seeds)) for name in names}
    row = 0
    for size in weight_chunks(n_boot, max(sizes)):
        shared = example_weights(rng, size, sizes[0]) if crossed else None
        for s, pack in enumerate(packs):
            weights = shared if shared is not None else example_weights(rng, size, sizes[s])
            for name, values in pack.deltas(weights).items():
                deltas[name][row : row + size, s] = values
        row += size
    observed = [pack.deltas(np.ones((1, pack.size))) for pack in packs]
    permuted = _permutation(packs, [n for n in names if n != "acc"], settings)
    results = {}
    for name in names:
        per_seed = np.array([o[name][0] for o in observed])
        difference = float(per_seed.mean())
        low, high = percentile_interval(
            combine_draws(per_seed, deltas[name], counts), settings.level
        )
        if name == "acc":
            right = [
                (p.forms["acc"][0].matrix[:, 0] > 0.5, p.forms["acc"][1].matrix[:, 0] > 0.5)
                for p in packs
            ]
            only_method = sum(int(np.count_nonzero(m & ~b)) for m, b in right)
            only_baseline = sum(int(np.count_nonzero(b & ~m)) for m, b in right)
            p_value, test = mcnemar_exact(only_method, only_baseline), "exact McNemar"
        else:
            p_value, test = permutation_pvalue(difference, permuted[name]), "paired permutation"
        floored = tuple(
            (run.path.parent, form.floored)
            for (m, b), pack in zip(paired, packs)
            for run, form in zip((m, b), pack.forms[name])
            if getattr(form, "floored", 0)
        )
        results[name] = PairedResult(difference, low, high, p_value, test, floored)
    return results


def _permutation(
    packs: Sequence[PairedMetrics], names: Sequence[str], settings: StatsSettings
) -> dict[str, np.ndarray]:
    """Mean over seeds of the differences with each (seed, example) pair's predictions
    swapped at random, ``n_boot`` times, per metric in ``names``."""
    permuted = {name: np.zeros(settings.n_boot) for name in names}
    if not names:
        return permuted
    rng = np.random.default_rng([settings.seed, 1])
    row = 0
    for size in weight_chunks(settings.n_boot, max(p.size for p in packs)):
        for pack in packs:
            swap = rng.random((size, pack.size)) < 0.5
            for name, values in pack.permuted(swap).items():
                if name in permuted:
                    permuted[name][row : row + size] += values / len(packs)
        row += size
    return permuted
