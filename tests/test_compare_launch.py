"""Launching with a stand-in training command: crashes are reported, finished runs skipped.

The stand-in (written to tmp_path) answers the command line softlabel-compare builds for
``softlabel.train -m`` the way a Hydra multirun does: one run directory per seed with
``.hydra/`` and a ``metrics.json``; ``+crash_seed=S`` makes seed S raise (after the other
seeds ran, as Hydra's basic launcher does), ``+crash_seed=all`` every seed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

from softlabel.compare.cli import compare

FAKE_TRAIN = r"""
import json, os, sys
from pathlib import Path

args = sys.argv[1:]
assert args[0] == "-m", args
kv = dict(a.lstrip("+").split("=", 1) for a in args[1:])
overrides = [a for a in args[1:] if not a.startswith("hydra.")]
seeds = [int(s) for s in kv["seed"].split(",")]
failed = []
if "barrier" in kv:  # wait (up to 60 s) until this many commands have started
    import time
    marks = Path(os.environ["FAKE_TRAIN_CALLS"]).parent / "started"
    marks.mkdir(exist_ok=True)
    (marks / f"{kv['method']}_{kv['seed']}").touch()
    deadline = time.monotonic() + 60
    while len(list(marks.iterdir())) < int(kv["barrier"]):
        if time.monotonic() > deadline:
            sys.exit("barrier not reached: the commands did not run at the same time")
        time.sleep(0.05)
for seed in seeds:
    run = Path(kv["hydra.sweep.dir"]) / kv["hydra.sweep.subdir"].replace("${seed}", str(seed))
    (run / ".hydra").mkdir(parents=True, exist_ok=True)
    (run / ".hydra" / "config.yaml").write_text(f"method: {kv['method']}\nseed: {seed}\n")
    job = [o if not o.startswith("seed=") else f"seed={seed}" for o in overrides]
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in job))
    with open(os.environ["FAKE_TRAIN_CALLS"], "a") as calls:
        calls.write(f"{kv['method']} {seed}\n")
    if kv.get("crash_seed") in (str(seed), "all"):
        failed.append(seed)
        continue
    if "teacher.checkpoint" in kv and not Path(kv["teacher.checkpoint"]).is_file():
        failed.append(seed)
        continue
    (run / "checkpoints").mkdir(exist_ok=True)
    (run / "checkpoints" / "best.ckpt").write_text("weights")
    acc = float(kv.get("acc", 0.9)) + 0.01 * seed
    m = {"test/acc": acc, "test/nll": 1 - acc, "test/ece": 0.01}
    metrics = {"method": kv["method"], "seed": seed, "task": "multiclass",
               "last": m, "best": {"epoch": 1, **m}, "monitor": "val/nll"}
    (run / "metrics.json").write_text(json.dumps(metrics))
if failed:
    print("Traceback (most recent call last):", file=sys.stderr)
    print(f"ValueError: target.smoothing must be in [0, 1], got 1.5 (seeds {failed})", file=sys.stderr)
    sys.exit(1)
"""


@pytest.fixture
def fake_train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    monkeypatch.setenv("FAKE_TRAIN_CALLS", str(tmp_path / "calls.txt"))
    return [sys.executable, str(script)]


def calls(tmp_path: Path) -> list[str]:
    path = tmp_path / "calls.txt"
    return path.read_text().splitlines() if path.is_file() else []


def run(tmp_path: Path, command: list[str], **changes):
    config = {
        "out": str(tmp_path / "cmp"),
        "name": "t",
        "seeds": [0, 1, 2],
        "train_command": command,
        "methods": {"hard": ["+acc=0.9"], "broken": ["+crash_seed=1"], "kd": ["target=kd"]},
        "pretrained": {"teacher": ["+acc=0.99"]},
        "progress": False,
    }
    return compare({**config, **changes})


def test_a_crash_is_reported_and_the_other_runs_finish(
    tmp_path: Path, fake_train: list[str]
) -> None:
    report = run(tmp_path, fake_train)
    table = pd.read_csv(report.results)
    status = {(r.method, r.seed): r.status for r in table.itertuples()}
    assert status.pop(("broken", 1)) == "failed"
    assert set(status.values()) == {"ok"} and len(status) == 9  # 8 method runs + the teacher
    assert "got 1.5" in table.loc[table["status"] == "failed", "error"].item()
    summary = report.summary.read_text()
    assert "### `broken`, seed 1" in summary and "Traceback" in summary
    assert "| `broken` | 2 (1 failed) |" in summary
    ckpt = tmp_path / "cmp" / "pretrained" / "teacher" / "checkpoints" / "best.ckpt"
    assert f"`teacher.checkpoint={ckpt}`" in summary
    # hard: acc 0.90, 0.91, 0.92 -> mean 0.91, std 0.01
    assert "| `hard` | 3 | 0.9100 ± 0.0100 |" in summary


def test_rerun_skips_finished_runs(tmp_path: Path, fake_train: list[str]) -> None:
    run(tmp_path, fake_train)
    first = calls(tmp_path)
    assert sorted(first) == sorted(
        ["teacher 0"] + [f"{m} {s}" for m in ("hard", "broken", "kd") for s in (0, 1, 2)]
    )
    report = run(tmp_path, fake_train)
    assert calls(tmp_path)[len(first) :] == ["broken 1"]  # only the failed run is retried
    assert pd.read_csv(report.results)["status"].tolist().count("failed") == 1


def test_changed_overrides_of_a_finished_run_are_flagged(
    tmp_path: Path, fake_train: list[str]
) -> None:
    run(tmp_path, fake_train, methods={"hard": ["+acc=0.9"]}, seeds=[0])
    report = run(tmp_path, fake_train, methods={"hard": ["+acc=0.8"]}, seeds=[0])
    assert calls(tmp_path) == ["hard 0"]
    assert "-+acc=0.9 ++acc=0.8" in report.summary.read_text()


def test_failed_teacher_skips_kd_and_per_run_logs(tmp_path: Path, fake_train: list[str]) -> None:
    report = run(
        tmp_path,
        fake_train,
        pretrained={"teacher": ["+crash_seed=all"]},
        launch="per_run",
        methods={"hard": ["+acc=0.9"], "kd": ["target=kd"]},
        seeds=[0, 1],
    )
    assert sorted(calls(tmp_path)) == ["hard 0", "hard 1", "teacher 0"]
    table = pd.read_csv(report.results)
    assert table.loc[table["method"] == "kd", "error"].str.contains("pretrained model").all()
    assert (tmp_path / "cmp" / "logs" / "hard_seed1.log").read_text().startswith("$ ")


def test_dry_run_runs_nothing(tmp_path: Path, fake_train: list[str]) -> None:
    assert run(tmp_path, fake_train, dry_run=True) is None
    assert calls(tmp_path) == []


def test_env_reaches_the_training_command(tmp_path: Path, fake_train: list[str]) -> None:
    elsewhere = tmp_path / "elsewhere.txt"
    run(
        tmp_path,
        fake_train,
        methods={"hard": ["+acc=0.9"]},
        seeds=[0],
        env={"FAKE_TRAIN_CALLS": str(elsewhere)},
    )
    assert calls(tmp_path) == [] and elsewhere.read_text() == "hard 0\n"


def test_jobs_run_commands_at_the_same_time(tmp_path: Path, fake_train: list[str]) -> None:
    # each command waits until 2 commands have started: serial launching would fail them
    report = run(
        tmp_path,
        fake_train,
        methods={"a": ["+barrier=2"], "b": ["+barrier=2"]},
        pretrained={},
        seeds=[0],
        jobs=2,
    )
    assert pd.read_csv(report.results)["status"].tolist() == ["ok", "ok"]


def test_jobs_wait_for_the_pretrained_model(tmp_path: Path, fake_train: list[str]) -> None:
    # kd fails in the stand-in when its teacher checkpoint does not exist yet
    report = run(tmp_path, fake_train, launch="per_run", jobs=4)
    table = pd.read_csv(report.results)
    assert table.loc[table["method"] == "kd", "status"].tolist() == ["ok"] * 3
    order = calls(tmp_path)
    assert all(order.index("teacher 0") < order.index(f"kd {s}") for s in (0, 1, 2))


@pytest.mark.parametrize("jobs", [0, -1, 1.5, True, "2"])
def test_bad_jobs_is_refused(tmp_path: Path, fake_train: list[str], jobs) -> None:
    with pytest.raises(ValueError, match=r"jobs must be an int >= 1, got"):
        run(tmp_path, fake_train, jobs=jobs)
    assert calls(tmp_path) == []


def test_the_command_exits_non_zero_when_a_run_failed(
    tmp_path: Path, fake_train: list[str]
) -> None:
    """Regression (issue 23): softlabel-compare exited 0 when some of its runs had failed."""
    import os
    import subprocess

    (tmp_path / "t.yaml").write_text(
        "defaults: [compare/base, _self_]\n"
        f"out: {tmp_path / 'cmp'}\n"
        "seeds: [0, 1]\n"
        f"train_command: [{', '.join(fake_train)}]\n"
        "methods: {hard: ['+acc=0.9'], broken: ['+crash_seed=1']}\n"
        "stats: {n_boot: 50}\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "softlabel.compare.cli", "--config-dir", str(tmp_path)]
    command += ["--config-name", "t", "progress=false"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    summary = tmp_path / "cmp" / "summary.md"
    assert result.stderr.strip().splitlines()[-1] == f"error: 1 of 4 runs failed; see {summary}"
    assert summary.is_file() and (tmp_path / "cmp" / "differences.csv").is_file()
    # without the failing method: status 0
    again = subprocess.run([*command, "~methods.broken"], capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
