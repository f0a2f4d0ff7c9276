"""Paired differences in softlabel-compare's outputs (differences.csv, summary.md), bad
input, and the exit status of a comparison whose runs or files failed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from softlabel.compare import load_runs, write_report
from softlabel.compare.cli import _aggregate_main, aggregate, compare
from softlabel.compare.differences import DIFFERENCE_COLUMNS, StatsSettings

N, K = 200, 4


def predictions_for(seed: int, skill: float, *, n: int = N, index_offset: int = 0):
    """Test predictions of a run: a fixed test set (labels, indices), logits from ``skill``."""
    test = np.random.default_rng(100)
    target = test.integers(0, K, n)
    index = test.permutation(3 * N)[:n] + index_offset  # dataset indices, not in order
    rng = np.random.default_rng(1000 * seed + int(skill * 100))
    logits = rng.normal(size=(n, K))
    logits[np.arange(n), target] += skill
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probs.astype(np.float32), target, index


def make_run(
    root: Path, method: str, seed: int, skill: float = 1.0, *, save=True, with_index=True, **kw
) -> Path:
    run = root / method / f"seed{seed}"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(f"method: {method}\nseed: {seed}\n")
    probs, target, index = predictions_for(seed, skill, **kw)
    right = probs.argmax(axis=1) == target
    metrics = {"test/acc": float(right.mean()), "test/nll": 1.0 - skill / 10, "test/ece": 0.05}
    record = {"method": method, "seed": seed, "task": "multiclass", "last": metrics}
    record["best"] = {"epoch": 2, **metrics}
    (run / "metrics.json").write_text(json.dumps(record))
    if save:
        arrays = {"probs": probs, "target": target} | ({"index": index} if with_index else {})
        for name in ("predictions_test.npz", "predictions_test_last.npz"):
            np.savez(run / name, **arrays)
    return run


def failed_run(root: Path, method: str, seed: int) -> None:
    run = root / method / f"seed{seed}"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(f"method: {method}\nseed: {seed}\n")
    (run / "train.log").write_text("RuntimeError: out of memory\n")


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for seed in (0, 1, 2):
        make_run(root, "hard", seed, 1.0)
        make_run(root, "kd", seed, 2.5)  # clearly better
        make_run(root, "same", seed, 1.0)  # the baseline's predictions exactly
    return root


def test_differences_csv_and_summary_table(runs: Path, tmp_path: Path) -> None:
    settings = StatsSettings(n_boot=400)
    report = aggregate([runs], tmp_path / "out", stats=settings)
    table = pd.read_csv(report.differences)
    assert tuple(table.columns) == DIFFERENCE_COLUMNS
    assert set(table["baseline"]) == {"hard"}  # the default baseline
    assert set(table["method"]) == {"kd", "same"} and set(table["checkpoint"]) == {"best", "last"}
    kd = table[(table["method"] == "kd") & (table["checkpoint"] == "best")].set_index("metric")
    # the difference is the mean over seeds of the per-seed accuracy differences
    frame = pd.read_csv(report.results)
    acc = frame.pivot(index="seed", columns="method", values="best/test/acc")
    assert kd.loc["acc", "difference"] == pytest.approx((acc["kd"] - acc["hard"]).mean())
    assert kd.loc["acc", "ci_low"] > 0 and kd.loc["acc", "p_value"] < 1e-6
    assert kd.loc["nll", "ci_high"] < 0  # more skill, lower NLL
    assert (kd["n_seeds"] == 3).all() and (kd["n_examples"] == N).all()
    assert set(kd["resampled"]) == {"seeds x examples"}
    assert (
        kd.loc["acc", "test"] == "exact McNemar" and kd.loc["nll", "test"] == "paired permutation"
    )
    same = table[table["method"] == "same"]
    assert (same["difference"] == 0).all() and (same["p_value"] == 1).all()
    assert ((same["ci_low"] <= 0) & (same["ci_high"] >= 0)).all()
    summary = report.summary.read_text()
    section = summary[summary.index("## Differences vs `hard`") :]
    kd_line = next(line for line in section.splitlines() if line.startswith("| `kd`"))
    assert kd_line.count("**") == 6  # acc, nll and ece intervals exclude 0: bold
    same_line = next(line for line in section.splitlines() if line.startswith("| `same`"))
    assert "**" not in same_line and "p 1.000" in same_line
    assert "400 draws" in section and "`stats.seed` 0" in section
    assert report.problems == [] and _aggregate_main([str(runs), "--n-boot", "50"]) == 0


def test_aggregation_is_deterministic_and_uses_the_stats_seed(runs: Path, tmp_path: Path) -> None:
    first = aggregate([runs], tmp_path / "a", stats=StatsSettings(n_boot=300, seed=3))
    second = aggregate([runs], tmp_path / "b", stats=StatsSettings(n_boot=300, seed=3))
    assert first.differences.read_bytes() == second.differences.read_bytes()
    other = aggregate([runs], tmp_path / "c", stats=StatsSettings(n_boot=300, seed=4))
    a, c = pd.read_csv(first.differences), pd.read_csv(other.differences)
    assert (a["difference"] == c["difference"]).all()  # the point estimates do not resample
    assert not np.allclose(a["ci_low"], c["ci_low"])


def test_baseline_must_be_a_method(runs: Path, tmp_path: Path) -> None:
    with pytest.raises(
        ValueError,
        match=r"baseline 'soft' is not a compared method; methods: \['hard', 'kd', 'same'\]",
    ):
        aggregate([runs], tmp_path / "out", baseline="soft")
    assert not (tmp_path / "out").exists()  # refused before anything is written
    report = aggregate([runs], tmp_path / "out", baseline="kd", stats=StatsSettings(n_boot=50))
    assert set(pd.read_csv(report.differences)["method"]) == {"hard", "same"}


def test_the_baseline_is_checked_before_anything_trains(tmp_path: Path) -> None:
    config = {
        "out": str(tmp_path / "cmp"),
        "seeds": [0],
        "methods": {"ls": ["target=ls"], "kd": ["target=kd"]},
        "train_command": ["false"],
        "baseline": "hard",
        "progress": False,
    }
    with pytest.raises(ValueError, match=r"baseline 'hard' is not a compared method"):
        compare(config)
    assert not (tmp_path / "cmp").exists()
    with pytest.raises(ValueError, match="stats.level"):
        compare({**config, "baseline": None, "stats": {"level": 2}})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("baseline=kdd", r"baseline 'kdd' is not a compared method"),
        ("stats.level=95", "stats.level"),
    ],
)
def test_the_command_refuses_a_bad_baseline_before_writing_out(
    tmp_path: Path, monkeypatch, override: str, message: str
) -> None:
    """The Hydra form checks the baseline and the stats settings with the plan, before
    Hydra creates ``out`` (it used to leave ``out/.hydra`` behind)."""
    import sys

    from softlabel.compare.cli import main

    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "recipe.yaml").write_text(
        "defaults: [compare/base, _self_]\nname: bad\nseeds: [0]\n"
        "methods: {hard: [target=hard], ls: [target=ls]}\n"
    )
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    argv = ["softlabel-compare", "--config-dir", str(configs), "--config-name", "recipe"]
    monkeypatch.setattr(sys, "argv", [*argv, override])
    with pytest.raises(Exception, match=message):  # Hydra's ConfigCompositionException
        main()
    assert list(work.iterdir()) == []


def test_seeds_without_a_baseline_run_are_dropped_and_listed(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for seed in (0, 1):
        make_run(root, "hard", seed)
    failed_run(root, "hard", 2)
    for seed in (0, 1, 2):
        make_run(root, "kd", seed, 2.0)
    report = aggregate([root], tmp_path / "out", stats=StatsSettings(n_boot=100))
    table = pd.read_csv(report.differences, dtype={"seeds": str, "dropped_seeds": str})
    assert (table["n_seeds"] == 2).all() and set(table["seeds"]) == {"0 1"}
    assert set(table["dropped_seeds"]) == {"2"}
    summary = report.summary.read_text()
    assert "| `kd` | 2 (dropped: 2) |" in summary
    assert "seeds dropped from the pairing: 2 (no `hard` run)" in summary


def test_predictions_of_different_test_sets_are_refused_naming_the_runs(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    make_run(runs, "shifted", 0, 2.0, index_offset=1)  # other dataset indices
    make_run(runs, "shifted", 1, 2.0)
    make_run(runs, "short", 0, 2.0, n=N - 10)
    assert _aggregate_main([str(runs), "--out", str(tmp_path / "out"), "--n-boot", "50"]) == 1
    report_dir = tmp_path / "out"
    table = pd.read_csv(report_dir / "differences.csv")
    assert set(table["method"]) == {"kd", "same"}  # the others are kept
    summary = (report_dir / "summary.md").read_text()
    for method, reason in (
        ("shifted", "other dataset indices"),
        ("short", "190 test examples against 200"),
    ):
        line = next(x for x in summary.splitlines() if f"`{method}` with `hard`" in x)
        assert str(runs / method / "seed0") in line and str(runs / "hard" / "seed0") in line
        assert reason in line
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: 4 other problems;") and str(report_dir / "summary.md") in last


def test_metrics_without_predictions_are_resampled_over_seeds_only(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for seed in (0, 1, 2):
        make_run(root, "hard", seed, save=False)
        make_run(root, "kd", seed, 2.0, save=False)
    report = aggregate([root], tmp_path / "out", stats=StatsSettings(n_boot=100))
    table = pd.read_csv(report.differences)
    assert set(table["resampled"]) == {"seeds"} and set(table["test"]) == {"sign-flip over seeds"}
    assert table["n_examples"].isna().all()
    # nll is logged as 1 - skill / 10: -0.1 on every seed; 3 seeds: p = 2 / 8
    nll = table[(table["metric"] == "nll") & (table["checkpoint"] == "best")].iloc[0]
    assert nll["difference"] == pytest.approx(-0.1) and nll["p_value"] == pytest.approx(0.25)
    assert nll["ci_low"] == pytest.approx(-0.1) and nll["ci_high"] == pytest.approx(-0.1)
    summary = report.summary.read_text()
    assert "†: resampled over seeds only" in summary


def test_a_failed_run_makes_aggregate_exit_non_zero(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Regression (issue 23): the command exited 0 when some of its runs had failed."""
    failed_run(runs, "kd", 3)
    assert _aggregate_main([str(runs), "--out", str(tmp_path / "out"), "--n-boot", "50"]) == 1
    assert (tmp_path / "out" / "summary.md").is_file()  # everything else was written
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == f"error: 1 of 10 runs failed; see {tmp_path / 'out' / 'summary.md'}"


def test_an_object_array_is_not_unpickled_and_the_others_are_kept(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Regression (issue 23): one predictions file holding an object array aborted the whole
    aggregation with numpy's message, naming no file."""
    bad = runs / "kd" / "seed1" / "predictions_test.npz"
    probs, target, index = predictions_for(1, 2.5)
    np.savez(bad, probs=np.array(list(probs), dtype=object), target=target, index=index)
    assert _aggregate_main([str(runs), "--out", str(tmp_path / "out"), "--n-boot", "50"]) == 1
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert f"skipped the predictions of run {runs / 'kd' / 'seed1'}" in summary
    assert str(bad) in summary and "allow_pickle" in summary
    assert (tmp_path / "out" / "plots" / "reliability.png").is_file()
    table = pd.read_csv(tmp_path / "out" / "differences.csv")
    kd = table[table["method"] == "kd"].set_index(["checkpoint", "metric"])
    assert kd.loc[("best", "acc"), "resampled"] == "seeds"  # that checkpoint: seeds only
    assert kd.loc[("last", "acc"), "resampled"] == "seeds x examples"
    assert "1 other problem;" in capsys.readouterr().err.strip().splitlines()[-1]


def test_write_report_records_the_problems(runs: Path, tmp_path: Path) -> None:
    failed_run(runs, "kd", 3)
    report = write_report(load_runs([runs]), tmp_path / "out", stats=StatsSettings(n_boot=50))
    assert report.failed == 1 and report.runs == 10
    assert report.problems == [
        f"run {runs.resolve() / 'kd' / 'seed3'} (method `kd`, seed 3) failed"
    ]
    assert report.summary.read_text().count("**Problem:**") == 1


def test_files_without_indices_are_paired_in_their_saved_order(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for seed in (0, 1):
        make_run(root, "hard", seed, with_index=seed == 0)  # one file of the pair has none
        make_run(root, "kd", seed, 2.0)
    report = aggregate([root], tmp_path / "out", stats=StatsSettings(n_boot=100))
    table = pd.read_csv(report.differences)
    assert set(table["resampled"]) == {"seeds x examples"} and report.problems == []
