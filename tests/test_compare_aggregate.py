"""Aggregation of fabricated run directories: known numbers in, known table out."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from softlabel.compare import (
    epoch_metrics,
    format_mean_std,
    load_runs,
    mean_curves,
    read_metrics,
    results_frame,
    summarize,
    write_report,
)
from softlabel.compare.cli import _aggregate_main
from softlabel.compare.report import summary_markdown

ACC = {"hard": [0.90, 0.92, 0.97], "ls": [0.95, 0.96]}
NLL = {"hard": [0.30, 0.20, 0.10], "ls": [0.10, 0.20]}


def make_run(
    run_dir: Path, method: str, seed: int, acc: float, nll: float, *, curve=None, probs=None
):
    """A finished run as the training app writes it (metrics.json, .hydra, CSV log)."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(f"method: {method}\nseed: {seed}\n")
    metrics = {
        "method": method,
        "seed": seed,
        "task": "multiclass",
        "wall_time_s": 1.5,
        "data": "digits",
        "student": "mlp",
        "target": {"name": method, "smoothing": 0.1},
        "last": {
            "val/acc": acc - 0.01,
            "test/acc": acc - 0.02,
            "test/nll": nll + 0.05,
            "test/ece": 0.05,
        },
        "best": {
            "epoch": 3,
            "val/acc": acc,
            "val/nll": nll,
            "test/acc": acc,
            "test/nll": nll,
            "test/ece": 0.02,
        },
        "monitor": "val/nll",
        "best_checkpoint": "checkpoints/best.ckpt",
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    if curve is not None:
        (run_dir / "logs").mkdir()
        curve.to_csv(run_dir / "logs" / "metrics.csv", index=False)
    if probs is not None:
        np.savez(run_dir / "predictions_test.npz", probs=probs[0], target=probs[1])


def make_failed_run(run_dir: Path, method: str, seed: int) -> None:
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(f"method: {method}\nseed: {seed}\n")
    (run_dir / "train.log").write_text(
        "starting\nValueError: smoothing must be in [0, 1], got 1.5\n"
    )


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for method, accs in ACC.items():
        for seed, (acc, nll) in enumerate(zip(accs, NLL[method])):
            make_run(root / method / f"seed{seed}", method, seed, acc, nll)
    make_failed_run(root / "ls" / "seed2", "ls", 2)
    return root


def test_summary_mean_and_std_match_hand_computation(runs: Path) -> None:
    frame = results_frame(load_runs([runs]))
    assert len(frame) == 6
    assert list(frame["status"]).count("failed") == 1
    stats = summarize(frame, ["best/test/acc", "last/test/nll"], methods=["hard", "ls"])
    # hard: mean(0.90, 0.92, 0.97) = 0.93; deviations -0.03, -0.01, 0.04 -> var = 0.0026 / 2
    assert stats.loc["hard", ("best/test/acc", "mean")] == pytest.approx(0.93)
    assert stats.loc["hard", ("best/test/acc", "std")] == pytest.approx(math.sqrt(0.0013))
    assert stats.loc["hard", ("best/test/acc", "n")] == 3
    # ls: the failed seed does not count; last nll = best nll + 0.05 -> 0.15, 0.25
    assert stats.loc["ls", ("last/test/nll", "mean")] == pytest.approx(0.20)
    assert stats.loc["ls", ("last/test/nll", "std")] == pytest.approx(math.sqrt(0.005))
    assert stats.loc["ls", ("last/test/nll", "n")] == 2


def test_report_files_and_tables(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = write_report(load_runs([runs]), out, title="T", methods=["hard", "ls"])
    csv = pd.read_csv(report.results)
    assert set(csv["method"]) == {"hard", "ls"} and len(csv) == 6
    assert csv.loc[csv["status"] == "ok", "best/test/acc"].sum() == pytest.approx(
        sum(ACC["hard"] + ACC["ls"])
    )
    text = report.summary.read_text()
    assert "| `hard` | 3 | 0.9300 ± 0.0361 |" in text
    assert "| `ls` | 2 (1 failed) | 0.9550 ± 0.0071 |" in text
    assert "## Failed runs" in text and "got 1.5" in text
    # validation nll: hard 0.2, ls 0.15; validation acc: hard 0.93, ls 0.955 -> ls on both
    assert "- best mean `val/nll`: `ls`" in text and "- best mean `val/acc`: `ls`" in text
    assert (out / "plots" / "metrics.png").stat().st_size > 1000
    assert "No reliability diagrams" in text and "No training curves" in text


def test_incomplete_metrics_json_is_not_finished(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text('{"method": "hard", "seed": 0, "last": {}')
    assert read_metrics(tmp_path) is None
    (tmp_path / "metrics.json").write_text('{"method": "hard", "seed": 0, "last": {}}')
    assert read_metrics(tmp_path) is None  # no "best"
    (tmp_path / "metrics.json").write_text('{"method": "hard", "seed": 0, "last": {}, "best": {}}')
    assert read_metrics(tmp_path) == {"method": "hard", "seed": 0, "last": {}, "best": {}}


def test_format_mean_std() -> None:
    assert format_mean_std(0.93, 0.036055) == "0.9300 ± 0.0361"
    assert format_mean_std(0.93, float("nan")) == "0.9300"
    assert format_mean_std(float("nan"), float("nan")) == "–"


def _curve(val_acc: list[float]) -> pd.DataFrame:
    """A CSVLogger log: a train row and a val row per epoch, plus a post-fit val row."""
    rows = []
    for epoch, acc in enumerate(val_acc):
        rows.append({"epoch": epoch, "step": 10 * epoch + 9, "train/loss": 1.0 / (epoch + 1)})
        rows.append({"epoch": epoch, "step": 10 * epoch + 9, "val/acc": acc})
    rows.append({"epoch": len(val_acc), "step": 99, "val/acc": 0.0, "test/acc": 0.5})
    return pd.DataFrame(rows)


def test_training_curves_mean_over_seeds(tmp_path: Path) -> None:
    make_run(tmp_path / "a0", "a", 0, 0.9, 0.1, curve=_curve([0.5, 0.7, 0.8]))
    make_run(tmp_path / "a1", "a", 1, 0.9, 0.1, curve=_curve([0.6, 0.9, 1.0]))
    one = epoch_metrics(tmp_path / "a0")
    assert list(one.index) == [0, 1, 2]  # the post-fit evaluation row is not an epoch
    curves = mean_curves(load_runs([tmp_path]))
    assert list(curves["a"]["val/acc"]) == pytest.approx([0.55, 0.8, 0.9])
    assert curves["a"]["val/acc:std"].iloc[0] == pytest.approx(math.sqrt(0.005))
    assert list(curves["a"]["train/loss"]) == pytest.approx([1.0, 0.5, 1 / 3])


def test_aggregate_command_with_curves_and_reliability(tmp_path: Path) -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    target = np.array([0, 1, 1, 1])
    for seed in (0, 1):
        make_run(
            tmp_path / "runs" / f"s{seed}",
            "kd",
            seed,
            0.9,
            0.1,
            curve=_curve([0.5, 0.7]),
            probs=(probs, target),
        )
    assert _aggregate_main([str(tmp_path / "runs"), "--out", str(tmp_path / "agg")]) == 0
    for name in (
        "results.csv",
        "summary.md",
        "plots/metrics.png",
        "plots/curves.png",
        "plots/reliability.png",
    ):
        assert (tmp_path / "agg" / name).is_file(), name
    assert "![reliability](plots/reliability.png)" in (tmp_path / "agg" / "summary.md").read_text()


def test_aggregate_of_nothing_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no run directory"):
        _aggregate_main([str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_runs([tmp_path / "missing"])


def test_aggregate_orders_methods_naturally() -> None:
    from softlabel.compare.cli import _natural_key

    names = ["ls_eps0.05", "kd_T20", "ls_eps0.0", "kd_T8", "ls_eps0.1"]
    assert sorted(names, key=_natural_key) == [
        "kd_T8",
        "kd_T20",
        "ls_eps0.0",
        "ls_eps0.05",
        "ls_eps0.1",
    ]


def test_runs_key_only_aggregates(runs: Path, tmp_path: Path) -> None:
    from softlabel.compare.cli import compare

    report = compare({"out": str(tmp_path / "agg"), "runs": [str(runs)], "name": "only"})
    assert report.summary.read_text().startswith("# only\n")
    assert len(pd.read_csv(report.results)) == 6


@pytest.mark.parametrize("headline", ["best", "last"])
def test_headline_table_comes_first_and_both_are_shown(
    runs: Path, tmp_path: Path, headline: str
) -> None:
    text = summary_markdown(load_runs([runs]), methods=["hard", "ls"], headline=headline)
    best = text.index("## Validation-selected checkpoint")
    last = text.index("## Last epoch")
    assert (best < last) == (headline == "best")
    first_heading = text[min(best, last) :].splitlines()[0]
    assert first_heading.endswith("(headline)")
    assert text.count("(headline)") == 1


def test_pretrained_table_shows_the_selected_and_the_last_checkpoint(tmp_path: Path) -> None:
    """Regression: only the selected checkpoint's metrics were shown, also when the methods
    were given the last epoch."""
    from softlabel.compare.runs import read_run

    make_run(tmp_path / "teacher", "teacher", 0, 0.9733, 0.1)
    make_run(tmp_path / "hard", "hard", 0, 0.95, 0.2)
    records = [read_run(tmp_path / "teacher", role="pretrained"), read_run(tmp_path / "hard")]
    text = summary_markdown(records, methods=["hard"])
    table = text[text.index("## Pretrained models") :]
    assert "test acc (selected) | test acc (last)" in table
    assert "| 0.9733 | 0.9533 |" in table  # best test/acc = acc, last = acc - 0.02


def test_reliability_reads_the_predictions_of_the_chosen_checkpoint(tmp_path: Path) -> None:
    from softlabel.compare.report import method_reliability

    target = np.array([0, 1, 1, 1])
    best = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])  # 3 of 4 right
    last = np.array([[0.4, 0.6], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])  # 1 of 4 right
    make_run(tmp_path / "r", "kd", 0, 0.9, 0.1, probs=(best, target))
    np.savez(tmp_path / "r" / "predictions_test_last.npz", probs=last, target=target)
    records = load_runs([tmp_path])
    for checkpoint, right in (("best", 3), ("last", 1)):
        bins, binary = method_reliability(records, n_bins=10, checkpoint=checkpoint)
        assert not binary
        counts = bins["kd"].count
        hits = np.nansum(bins["kd"].accuracy * counts)
        assert counts.sum() == 4 and float(hits) == pytest.approx(right)
    with pytest.raises(ValueError, match="checkpoint must be one of"):
        method_reliability(records, checkpoint="final")
