"""Time ``softlabel-compare aggregate`` on a recipe-sized set of runs, paired differences included.

Writes ``--methods`` x ``--seeds`` method runs plus one pretrained run (default 13 x 3 + 1 =
40 runs) the way the training app does: ``metrics.json``, a CSV log of ``--epochs`` epochs,
and test predictions of both checkpoints (``--examples`` x ``--classes``, float32). Then
times, in this order:

- the reference: the aggregation as it was before paired differences (``load_runs``,
  ``results_frame``, the metric, curve and reliability plots, one reading of the predictions);
- ``aggregate()`` (in-process: all of the above, plus ``differences.csv`` and ``summary.md``);
- the command users type, ``python -m softlabel.compare.cli aggregate DIR`` (a fresh process,
  imports included), wall clock.

    python benchmarks/compare_aggregate.py                 # 40 runs, 750 test examples
    python benchmarks/compare_aggregate.py --examples 10000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from softlabel.compare import load_runs, mean_curves, results_frame
from softlabel.compare.cli import aggregate
from softlabel.compare.differences import StatsSettings
from softlabel.compare.plots import plot_curves, plot_metric_bars, plot_reliability
from softlabel.compare.report import method_reliability


def make_runs(root: Path, methods: int, seeds: int, n: int, k: int, epochs: int) -> int:
    rng = np.random.default_rng(0)
    target = rng.integers(0, k, n)
    index = rng.permutation(5 * n)[:n]
    names = [("pretrained", "teacher", 0)] + [
        ("method", f"m{m}", s) for m in range(methods) for s in range(seeds)
    ]
    for role, method, seed in names:
        run = root / ("pretrained" if role == "pretrained" else "runs") / method / f"seed{seed}"
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(f"method: {method}\nseed: {seed}\n")
        logits = rng.normal(size=(n, k))
        logits[np.arange(n), target] += 2.0 + 0.05 * len(method) + rng.normal(size=n)
        probs = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
        right = float((probs.argmax(axis=1) == target).mean())
        nll = float(-np.log(probs[np.arange(n), target]).mean())
        metrics = {"test/acc": right, "test/nll": nll, "test/ece": 0.02, "val/acc": right}
        record = {"method": method, "seed": seed, "task": "multiclass", "last": metrics}
        record.update(best={"epoch": epochs - 1, **metrics}, monitor="val/nll")
        (run / "metrics.json").write_text(json.dumps(record))
        rows = []
        for epoch in range(epochs):
            rows.append({"epoch": epoch, "step": epoch, "train/loss": 1.0 / (epoch + 1)})
            rows.append({"epoch": epoch, "step": epoch, "val/acc": right, "val/nll": nll})
        (run / "logs").mkdir()
        pd.DataFrame(rows).to_csv(run / "logs" / "metrics.csv", index=False)
        if role == "method":
            for name in ("predictions_test.npz", "predictions_test_last.npz"):
                np.savez(run / name, probs=probs, target=target, index=index)
    return len(names)


def reference(root: Path, out: Path) -> None:
    """The aggregation without paired differences (what it did before issue 24)."""
    records = load_runs([root])
    frame = results_frame(records)
    frame.to_csv(out / "results.csv", index=False)
    finished = frame[(frame["status"] == "ok") & (frame["role"] == "method")]
    plot_metric_bars(finished, ["acc", "nll", "ece"], out / "plots" / "metrics.png")
    plot_curves(mean_curves(records), out / "plots" / "curves.png")
    bins, binary = method_reliability(records, 15, "best")
    plot_reliability(bins, out / "plots" / "reliability.png", binary=binary)


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", type=int, default=13)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--examples", type=int, default=750)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--n-boot", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cmp"
        count = make_runs(root, args.methods, args.seeds, args.examples, args.classes, args.epochs)
        (Path(tmp) / "ref" / "plots").mkdir(parents=True)
        ref_wall, ref_cpu = timed(lambda: reference(root, Path(tmp) / "ref"))
        stats = StatsSettings(n_boot=args.n_boot)
        agg_wall, agg_cpu = timed(lambda: aggregate([root], Path(tmp) / "agg", stats=stats))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        command = [sys.executable, "-m", "softlabel.compare.cli", "aggregate", str(root)]
        command += ["--out", str(Path(tmp) / "cli"), "--n-boot", str(args.n_boot)]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        cli_wall = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(done.stderr[-2000:])
        rows = len(pd.read_csv(Path(tmp) / "agg" / "differences.csv"))
    print(
        f"{count} runs ({args.methods} methods x {args.seeds} seeds + 1 pretrained), "
        f"{args.examples} test examples x {args.classes} classes, {args.epochs} epochs of "
        f"logs, n_boot {args.n_boot}, {rows} rows of differences.csv; {os.cpu_count()} CPUs"
    )
    print("| what | wall s | CPU s | wall / reference |")
    print("|---|---|---|---|")
    print(f"| reference: aggregation without differences | {ref_wall:.2f} | {ref_cpu:.2f} | 1.00 |")
    print(
        f"| `aggregate()` with differences | {agg_wall:.2f} | {agg_cpu:.2f} | "
        f"{agg_wall / ref_wall:.2f} |"
    )
    print(
        f"| `softlabel-compare aggregate` (new process) | {cli_wall:.2f} | – | {cli_wall / ref_wall:.2f} |"
    )


if __name__ == "__main__":
    main()
