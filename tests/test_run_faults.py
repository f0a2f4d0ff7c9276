"""softlabel-train refuses bad starts before anything in the run directory changes: resumes
append to the history (or leave it untouched when refused), one run per directory, and
clear errors for settings that would train nothing, never stop or fail late."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
import torch
from omegaconf import open_dict
from torch import nn
from train_configs import QUICK as BASE_QUICK
from train_configs import compose_train

from softlabel import SoftTargetLoss
from softlabel.modules import LiveTeacher, PreviousModelProvider, SoftLabelModule
from softlabel.modules.rundir import LOCK_FILE, RunDirectoryBusyError, RunLock, _process_start
from softlabel.targets import PreviousModel, Teacher
from softlabel.train import train

QUICK = [*BASE_QUICK, "trainer.log_every_n_steps=1"]


def _compose(*overrides: str):
    return compose_train(*QUICK, *overrides)


def _files(directory) -> dict[str, bytes]:
    """Every file below ``directory`` (relative path -> bytes)."""
    found = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, directory)] = handle.read()
    return found


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished one-epoch run (cosine schedule over its 3 optimizer steps)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    train(_compose("trainer.max_epochs=1"), run)
    return run


@pytest.fixture
def run_copy(finished_run, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(finished_run, target)
    return target


# ------------------------------------------------------------------------------ item 1
def test_resume_into_the_same_directory_continues_the_csv_history(tmp_path):
    """Resuming from the epoch-0 checkpoint of a 2-epoch run into its own directory gives
    the same metrics.csv as the uninterrupted run: earlier rows kept, later ones appended."""
    run = tmp_path / "run"

    def config(*extra):
        cfg = _compose("trainer.max_epochs=2", *extra)
        with open_dict(cfg):
            cfg.callbacks.every_epoch = {
                "_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
                "filename": "e{epoch}",
                "auto_insert_metric_name": False,
                "save_top_k": -1,
                "every_n_epochs": 1,
                "save_last": False,
                "monitor": "val/acc",
                "mode": "max",
            }
        return cfg

    train(config(), run)
    uninterrupted = (run / "logs" / "metrics.csv").read_text()
    assert ",0," in uninterrupted and "\n1," in uninterrupted  # both epochs logged
    resumed = train(config(f"ckpt_path={run / 'checkpoints' / 'e0.ckpt'}"), run)
    assert (run / "logs" / "metrics.csv").read_text() == uninterrupted
    assert resumed["global_step"] == 6 and not (run / LOCK_FILE).exists()


def test_unusable_ckpt_path_changes_nothing(run_copy, tmp_path):
    before = _files(run_copy)
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"ckpt_path=.*corrupt\.ckpt.*could not be read"):
        train(_compose("trainer.max_epochs=1", f"ckpt_path={corrupt}"), run_copy)
    weights = tmp_path / "weights.pt"
    torch.save(nn.Linear(2, 2).state_dict(), weights)
    with pytest.raises(ValueError, match="is not a Lightning training checkpoint"):
        train(_compose("trainer.max_epochs=1", f"ckpt_path={weights}"), run_copy)
    last = run_copy / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match=r"do not fit the configured student \(.*shape"):
        train(_compose("trainer.max_epochs=1", "student.hidden=[8]", f"ckpt_path={last}"), run_copy)
    with pytest.raises(IsADirectoryError, match=r"is a directory.*did you mean .*last\.ckpt"):
        train(_compose("trainer.max_epochs=1", f"ckpt_path={run_copy}"), run_copy)
    with pytest.raises(FileNotFoundError, match="ckpt_path not found"):
        train(_compose("trainer.max_epochs=1", f"ckpt_path={tmp_path / 'nope.ckpt'}"), run_copy)
    assert _files(run_copy) == before


def _hydra_app(*args: str, monkeypatch, cwd) -> None:
    """``softlabel-train ARGS`` in this process (Hydra writes .hydra/ and train.log as on
    the command line); errors propagate. Hydra's logging setup is undone afterwards."""
    import logging

    from softlabel.train import main

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.setattr(sys, "argv", ["softlabel-train", *QUICK, "threads=1", *args])
    try:
        main()
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _hold_lock(run, process: subprocess.Popen, host: str | None = None) -> None:
    import json

    (run / LOCK_FILE).write_text(
        json.dumps(
            {
                "pid": process.pid,
                "host": host or socket.gethostname(),
                "process_start": _process_start(process.pid),
                "started": "earlier",
                "token": "other",
            }
        )
    )


def test_refused_runs_leave_the_hydra_files_and_logs_alone(tmp_path, monkeypatch):
    """Hydra rewrites .hydra/ when a job starts; a run refused before training (corrupt
    ckpt_path, directory locked by a live run) puts the earlier run's files back."""
    _hydra_app("trainer.max_epochs=1", "hydra.run.dir=run", monkeypatch=monkeypatch, cwd=tmp_path)
    run = tmp_path / "run"
    assert (run / ".hydra" / "started" / "config.yaml").is_file()
    before = {k: v for k, v in _files(run).items() if k != "train.log"}
    (tmp_path / "bad.ckpt").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="could not be read as a checkpoint"):
        _hydra_app(
            "trainer.max_epochs=1",
            "ckpt_path=bad.ckpt",
            "hydra.run.dir=run",
            monkeypatch=monkeypatch,
            cwd=tmp_path,
        )
    assert {k: v for k, v in _files(run).items() if k != "train.log"} == before

    holder = _sleeper()
    try:
        _hold_lock(run, holder)
        before = {k: v for k, v in _files(run).items() if k != "train.log"}
        with pytest.raises(RunDirectoryBusyError, match=f"in use by .*pid {holder.pid}"):
            _hydra_app(
                "trainer.max_epochs=2", "hydra.run.dir=run", monkeypatch=monkeypatch, cwd=tmp_path
            )
    finally:
        holder.kill()
        holder.wait()
    assert {k: v for k, v in _files(run).items() if k != "train.log"} == before


# ------------------------------------------------------------------------------ item 2
def test_resume_with_another_run_length_is_refused(run_copy):
    before = _files(run_copy)
    last = run_copy / "checkpoints" / "last.ckpt"
    with pytest.raises(
        ValueError,
        match=r"CosineAnnealingLR has T_max=3 .*gives T_max=6 .*trainer\.max_epochs=1 at 3 steps",
    ):
        train(_compose("trainer.max_epochs=2", f"ckpt_path={last}"), run_copy)
    with pytest.raises(
        ValueError,
        match=r"holds the state of 1 learning-rate scheduler\(s\) but this run configures none",
    ):
        train(_compose("trainer.max_epochs=2", "scheduler=none", f"ckpt_path={last}"), run_copy)
    assert _files(run_copy) == before


# ------------------------------------------------------------------------------ item 3
def test_a_second_run_into_a_locked_directory_is_refused(run_copy):
    before = _files(run_copy)
    holder = _sleeper()
    try:
        _hold_lock(run_copy, holder)
        with pytest.raises(RunDirectoryBusyError, match=rf"in use by .*pid {holder.pid} on this"):
            train(_compose("trainer.max_epochs=1"), run_copy)
        assert (run_copy / LOCK_FILE).read_bytes() == _files(run_copy)[LOCK_FILE]
    finally:
        holder.kill()
        holder.wait()
    assert {k: v for k, v in _files(run_copy).items() if k != LOCK_FILE} == before
    # the holder is gone: its lock is stale and taken over
    record = train(_compose("trainer.max_epochs=1"), run_copy)
    assert record["global_step"] == 3 and not (run_copy / LOCK_FILE).exists()


def test_lock_of_another_host_and_release(tmp_path):
    holder = _sleeper()
    try:
        _hold_lock(tmp_path, holder, host="elsewhere.example")
        with pytest.raises(
            RunDirectoryBusyError, match="host 'elsewhere.example'.*delete the lock"
        ):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    (tmp_path / LOCK_FILE).unlink()
    lock = RunLock(tmp_path)
    lock.acquire()
    with pytest.raises(RunDirectoryBusyError, match=f"pid {os.getpid()}"):
        RunLock(tmp_path).acquire()  # the same process, a second run
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()


# ------------------------------------------------------------------------------ item 4
def test_monitor_typo_is_refused_before_training(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(
        ValueError, match=r"monitor='val/nlll' is not a metric this run logs; allowed: .*val/nll"
    ):
        train(_compose("monitor=val/nlll"), run)
    with pytest.raises(
        ValueError,
        match=r"callbacks\.model_checkpoint\.mode=min with monitor=val/acc.*mode=max",
    ):
        train(_compose("monitor=val/acc"), run)
    assert not run.exists()


# ------------------------------------------------------------------------------ item 5
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.max_epochs=-1", "scheduler=none"], r"max_epochs=-1 .* never stops"),
        (["trainer.max_epochs=0"], r"trainer\.max_epochs=0 trains nothing.*allowed: an integer"),
        (["trainer.max_steps=0"], r"trainer\.max_steps=0 trains nothing; allowed"),
        (["trainer.max_steps=null"], r"trainer\.max_steps=None; allowed: -1 \(no step limit\)"),
        (["trainer.limit_train_batches=0"], r"limit_train_batches=0 trains nothing"),
        (
            ["data.subset=5"],
            r"train=3, val=1, test=1 samples.* at least 10 .*data\.subset=5 is too small: "
            r"allowed: null \(all 1797 samples\) or an integer >= 64",
        ),
        (["threads=-1"], r"threads=-1; allowed: null .* or an integer >= 1"),
        (["threads=0"], r"threads=0; allowed"),
    ],
)
def test_settings_that_train_nothing_or_forever_are_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train(_compose(*overrides), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_smallest_suggested_subset_is_accepted():
    from softlabel.modules.build import build_datamodule
    from softlabel.modules.run.checks import check_run_length, check_splits

    cfg = _compose("data.subset=64")
    check_splits(cfg, build_datamodule(cfg))
    check_run_length(_compose("trainer.max_epochs=-1", "trainer.max_steps=2"))
    check_run_length(_compose("trainer.max_epochs=-1", "trainer.max_time=00:00:01:00"))
    check_run_length(_compose("trainer.max_epochs=0", "trainer.fast_dev_run=1"))


def test_a_run_bounded_by_max_steps_alone(tmp_path):
    """trainer.max_steps is a key of every trainer config (no "+"), as the run-length
    messages say; with trainer.max_epochs=-1 it alone ends the run."""
    overrides = ["trainer.max_epochs=-1", "trainer.max_steps=3", "scheduler=none"]
    record = train(_compose(*overrides), tmp_path / "run")
    assert record["global_step"] == 3


# ------------------------------------------------------------------------------ item 8
def _linear(device="cpu") -> nn.Module:
    return nn.Linear(4, 3, device=device)


@pytest.mark.parametrize(
    ("provider", "role", "target"),
    [(LiveTeacher, "teacher", Teacher), (PreviousModelProvider, "previous model", PreviousModel)],
)
def test_reference_model_on_another_device_is_refused(provider, role, target):
    reference = provider(_linear("meta"))
    with pytest.raises(
        ValueError, match=f"the {role} model .* is on meta but the student is on cpu"
    ):
        SoftLabelModule(
            _linear(),
            SoftTargetLoss(target()),
            optimizer=torch.optim.SGD,
            reference_provider=reference,
            num_classes=3,
        )
    with pytest.raises(ValueError, match=f"the {role} model .* is on meta but the batch is on cpu"):
        reference(torch.zeros(2, 4), torch.arange(2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_teacher_on_gpu_and_student_on_cpu_is_refused():
    with pytest.raises(ValueError, match="teacher model .* is on cuda:0 but the student is on cpu"):
        SoftLabelModule(
            _linear(),
            SoftTargetLoss(Teacher()),
            optimizer=torch.optim.SGD,
            reference_provider=LiveTeacher(_linear("cuda")),
            num_classes=3,
        )


def test_stale_lock_wait_is_short(tmp_path):
    """An unreadable lock file (a writer that died mid-write long ago) is reported, not waited on."""
    (tmp_path / LOCK_FILE).write_text("")
    old = time.time() - 3600
    os.utime(tmp_path / LOCK_FILE, (old, old))
    with pytest.raises(RunDirectoryBusyError, match="unreadable lock file"):
        RunLock(tmp_path).acquire()
