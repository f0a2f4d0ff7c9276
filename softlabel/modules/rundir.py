"""The run directory of ``softlabel-train``: one run at a time, resumes append, refusals
leave it as it was.

* :class:`RunLock`: ``train.lock`` (pid, host, process start time) taken at start; a second
  run into the same directory is refused while the holder is alive. A lock left by a crashed
  process on this host is stale and taken over, with a warning.
* :class:`HydraFiles`: Hydra writes ``.hydra/{config,hydra,overrides}.yaml`` when a job
  starts, before the app can check anything. A run that starts training keeps a copy in
  ``.hydra/started/``; a run refused before training puts that copy back.
* :class:`ResumableCSVLogger`: Lightning's ``CSVLogger`` deletes ``metrics.csv`` when its
  writer is created. Here nothing is touched until the first rows are saved; a resumed run
  then keeps the rows logged before the checkpoint's step and appends its own.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import socket
import time
import uuid
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from softlabel._io import atomic_write

__all__ = [
    "CHECKPOINT_DIR",
    "HYDRA_STARTED_DIR",
    "LOCK_FILE",
    "HydraFiles",
    "ResumableCSVLogger",
    "RunDirectoryBusyError",
    "RunLock",
    "is_launch_rank_zero",
]

log = logging.getLogger(__name__)

LOCK_FILE = "train.lock"
#: where the run's checkpoints go (``last.ckpt``, ``best.ckpt``)
CHECKPOINT_DIR = "checkpoints"
HYDRA_STARTED_DIR = "started"
HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")
# An unreadable lock file younger than this is a lock being written, not a broken one.
_LOCK_WRITE_GRACE_S = 30.0
# Environment variables holding a process's rank under Lightning, torchrun, SLURM and MPI.
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")


def is_launch_rank_zero() -> bool:
    """True unless the environment says this process is not the global rank 0 (a DDP
    worker started by Lightning, torchrun or srun); the run directory belongs to rank 0."""
    for name in _RANK_VARIABLES:
        value = os.environ.get(name)
        if value not in (None, "", "0"):
            return False
    return True


# ---------------------------------------------------------------------------------- lock
class RunDirectoryBusyError(RuntimeError):
    """Another live run holds the run directory's lock."""


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return fields[19]  # field 22 of stat; the split dropped "pid (comm)"
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError:
        return True
    now = _process_start(pid)
    return start is None or now is None or now == start  # a reused pid is another process


class RunLock:
    """``<directory>/train.lock``: at most one run writes into a directory at a time."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = os.path.join(os.fspath(directory), LOCK_FILE)
        self._token: str | None = None
        self._made_directory = False

    @property
    def held(self) -> bool:
        return self._token is not None

    def _record(self) -> dict[str, Any]:
        pid = os.getpid()
        return {
            "pid": pid,
            "host": socket.gethostname(),
            "process_start": _process_start(pid),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "token": self._token,
        }

    def _read(self) -> dict[str, Any] | None:
        try:
            with open(self.path, encoding="utf-8") as handle:
                record = json.load(handle)
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`RunDirectoryBusyError` naming the holder."""
        if self.held:
            return
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            os.makedirs(directory, exist_ok=True)
            self._made_directory = True
        for _ in range(5):
            self._token = uuid.uuid4().hex
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._token = None
            else:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    json.dump(self._record(), handle)
                    handle.flush()
                    os.fsync(handle.fileno())
                return
            holder = self._read()
            if holder is None:
                try:
                    age = time.time() - os.path.getmtime(self.path)
                except FileNotFoundError:
                    continue  # released meanwhile: try again
                if age < _LOCK_WRITE_GRACE_S:
                    time.sleep(0.2)
                    continue
                raise RunDirectoryBusyError(
                    f"the run directory {os.path.dirname(self.path)!r} has an unreadable lock "
                    f"file {self.path!r}; if no other softlabel-train run uses this directory, "
                    "delete the file and start again"
                )
            if self._is_stale(holder):
                log.warning(
                    "taking over the stale lock %s of process %s on %s (started %s), which "
                    "is no longer running",
                    self.path,
                    holder.get("pid"),
                    holder.get("host"),
                    holder.get("started"),
                )
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
                continue
            raise RunDirectoryBusyError(self._busy_message(holder))
        raise RunDirectoryBusyError(
            f"could not take the lock {self.path!r}: other runs keep taking it; "
            "start one run per directory (hydra.run.dir)"
        )

    def _is_stale(self, holder: dict[str, Any]) -> bool:
        if holder.get("host") != socket.gethostname():
            return False  # no way to check a process on another machine
        try:
            pid = int(holder["pid"])
        except (KeyError, TypeError, ValueError):
            return False
        return not _alive(pid, holder.get("process_start"))

    def _busy_message(self, holder: dict[str, Any]) -> str:
        here = holder.get("host") == socket.gethostname()
        where = "this machine" if here else f"host {holder.get('host')!r}"
        hint = (
            "wait for it to finish, or give this run its own directory (hydra.run.dir=DIR)"
            if here
            else "if that run is gone, delete the lock file; otherwise give this run its own "
            "directory (hydra.run.dir=DIR)"
        )
        return (
            f"the run directory {os.path.dirname(self.path)!r} is in use by another "
            f"softlabel-train run (pid {holder.get('pid')} on {where}, started "
            f"{holder.get('started')}; lock file {self.path!r}): two runs writing into one "
            f"directory overwrite each other's checkpoints and logs. {hint[0].upper()}{hint[1:]}"
        )

    def release(self) -> None:
        """Remove the lock file if this object holds it (and the directory, if ``acquire``
        made it and nothing else was written there)."""
        if not self.held:
            return
        holder = self._read()
        if holder is not None and holder.get("token") == self._token:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        self._token = None
        if self._made_directory:
            self._made_directory = False
            try:
                os.rmdir(os.path.dirname(self.path))
            except OSError:  # not empty: the run wrote its files
                pass


# ------------------------------------------------------------------------- hydra files
class HydraFiles:
    """The ``.hydra`` files Hydra wrote for this job, kept for a refused start.

    ``directory`` is ``<run dir>/<hydra.output_subdir>`` when the job's Hydra output
    directory is ``output_dir``; None otherwise (programmatic use, DDP workers, or
    ``hydra.output_subdir=null``): then every method does nothing.
    """

    def __init__(self, output_dir: str | os.PathLike[str], enabled: bool = True) -> None:
        self.directory = _hydra_output_subdir(os.fspath(output_dir)) if enabled else None
        self.own: dict[str, bytes] = {}
        if self.directory is not None:
            for name in HYDRA_FILES:
                path = os.path.join(self.directory, name)
                if os.path.isfile(path):
                    with open(path, "rb") as handle:
                        self.own[name] = handle.read()

    @property
    def started_dir(self) -> str | None:
        return None if self.directory is None else os.path.join(self.directory, HYDRA_STARTED_DIR)

    def accept(self) -> None:
        """This run starts training: its files are the directory's (again, if a refused
        run put older ones back meanwhile), and the copy for later refusals."""
        if self.directory is None or not self.own:
            return
        for target in (self.directory, self.started_dir):
            assert target is not None
            for name, content in self.own.items():
                path = os.path.join(target, name)
                if _read_bytes(path) != content:
                    atomic_write(path, lambda tmp, data=content: tmp.write_bytes(data))

    def restore(self) -> None:
        """This run was refused before training: put back the files of the last run that
        started here (nothing to put back in a directory no run has trained in)."""
        started = self.started_dir
        if started is None or not os.path.isdir(started):
            return
        assert self.directory is not None
        for name in HYDRA_FILES:
            source = os.path.join(started, name)
            if os.path.isfile(source):
                shutil.copyfile(source, os.path.join(self.directory, name))


def _read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None


def _hydra_output_subdir(output_dir: str) -> str | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
    except (ImportError, ValueError):
        return None
    subdir = hydra_cfg.get("output_subdir")
    job_dir = hydra_cfg.runtime.get("output_dir")
    if not subdir or not job_dir:
        return None
    if os.path.abspath(str(job_dir)) != os.path.abspath(output_dir):
        return None
    return os.path.join(output_dir, str(subdir))


# ---------------------------------------------------------------------------- csv logs
def _step(row: dict[str, str]) -> float | None:
    try:
        return float(row.get("step") or "")
    except ValueError:
        return None


class _ResumableWriter(ExperimentWriter):
    """Lightning's CSV writer, except that the existing ``metrics.csv`` is dealt with at the
    first save of rows (not when the writer is created): a fresh run replaces it, a resumed
    run (``keep_before_step``) keeps its rows with ``step < keep_before_step``."""

    def __init__(self, log_dir: str, keep_before_step: int | None) -> None:
        self._keep_before_step = keep_before_step
        self._first_save = True
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        """Called by the base class on creation: deferred to the first save."""

    def save(self) -> None:
        if self._first_save and self.metrics:
            self._first_save = False
            self._prepare_file()
        super().save()

    def _prepare_file(self) -> None:
        path = self.metrics_file_path
        if not self._fs.isfile(path):
            return
        if self._keep_before_step is None:
            log.warning("a fresh run (no ckpt_path) replaces the earlier log %s", path)
            self._fs.rm_file(path)
            return
        with self._fs.open(path, "r", newline="") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            rows = list(reader)
        kept = [r for r in rows if (s := _step(r)) is None or s < self._keep_before_step]
        dropped = len(rows) - len(kept)
        if dropped:
            log.info(
                "resuming at step %d: %d row(s) of %s logged after the checkpoint are "
                "dropped, %d earlier row(s) kept",
                self._keep_before_step,
                dropped,
                path,
                len(kept),
            )
        # The base class writes its header sorted and appends in that column order.
        self.metrics_keys = sorted(header)

        def write(tmp: Any) -> None:
            with open(tmp, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(kept)

        atomic_write(path, write)


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` survives a resume: ``resume_step`` (the
    checkpoint's global step) keeps the rows logged before it, and nothing in the log
    directory changes before the first rows are saved."""

    def __init__(self, *args: Any, resume_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_step = None if resume_step is None else int(resume_step)

    @property
    @rank_zero_experiment
    def experiment(self) -> _ResumableWriter:
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = _ResumableWriter(self.log_dir, self.resume_step)
        return self._experiment
