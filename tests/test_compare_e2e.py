"""A tiny real comparison through the command line: 2 methods x 2 seeds, plus a method
whose override makes training fail (reported, not fatal), then a re-run that skips."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    not (ROOT / "softlabel" / "train.py").is_file() or not (ROOT / "conf" / "train.yaml").is_file(),
    reason="the training app softlabel.train is not there yet",
)

CONFIG = """
defaults:
  - compare/base
  - _self_
name: tiny
out: {out}
base: [data=digits, data.subset=200, trainer.max_epochs=1, ++trainer.limit_train_batches=2]
seeds: [0, 1]
env: {{OMP_NUM_THREADS: 1}}
methods:
  hard: [target=hard]
  ls: [target=ls, target.smoothing=0.2]
  broken: [target=ls, target.smoothing=1.5]
"""


def compare(config_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "softlabel.compare.cli",
        "--config-dir",
        str(config_dir),
        "--config-name",
        "tiny",
        "progress=false",
        *overrides,
    ]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_tiny_comparison_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    (tmp_path / "tiny.yaml").write_text(CONFIG.format(out=out))
    result = compare(tmp_path)
    # a run failed: everything is written, the status is 1 and the last line says why
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: 2 of 6 runs failed; see ")
    for name in (
        "results.csv",
        "differences.csv",
        "summary.md",
        "plots/metrics.png",
        "plots/curves.png",
    ):
        assert (out / name).is_file(), name
    table = pd.read_csv(out / "results.csv")
    assert set(table["method"]) == {"hard", "ls", "broken"}
    ok = table[table["status"] == "ok"]
    assert sorted(zip(ok["method"], ok["seed"])) == [("hard", 0), ("hard", 1), ("ls", 0), ("ls", 1)]
    assert (
        ok["best/test/acc"].between(0, 1).all() and (ok["target.smoothing"].dropna() == 0.2).all()
    )
    summary = (out / "summary.md").read_text()
    assert "| `hard` | 2 |" in summary and "| `ls` | 2 |" in summary
    assert "### `broken`, seed 0" in summary and "1.5" in summary.split("## Failed runs")[1]
    assert "## Differences vs `hard`" in summary
    assert set(pd.read_csv(out / "differences.csv")["method"]) == {"ls"}
    has_predictions = any(out.glob("runs/*/seed*/predictions_test.npz"))
    assert (out / "plots" / "reliability.png").is_file() == has_predictions
    # again without the broken method: every finished run is skipped
    stamp = (out / "runs/hard/seed0/metrics.json").stat().st_mtime_ns
    rerun = compare(tmp_path, "~methods.broken")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (out / "runs/hard/seed0/metrics.json").stat().st_mtime_ns == stamp
    assert "hard:" not in rerun.stderr  # no command was launched for it
    assert set(pd.read_csv(out / "results.csv")["method"]) == {"hard", "ls"}
