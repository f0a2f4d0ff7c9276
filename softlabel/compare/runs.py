"""Reading training run directories (the ``metrics.json`` contract of docs/architecture.md)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "METRICS_FILE",
    "PREDICTIONS_FILE",
    "PREDICTIONS_FILES",
    "RunRecord",
    "find_run_dirs",
    "load_runs",
    "read_metrics",
    "read_run",
    "run_config",
]

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions_test.npz"
#: Test predictions saved by ``save_predictions=true``, per checkpoint (val-selected, final).
PREDICTIONS_FILES = {"best": PREDICTIONS_FILE, "last": "predictions_test_last.npz"}
REQUIRED_KEYS = ("method", "seed", "last", "best")


@dataclass
class RunRecord:
    """One training run: where it lives, what it was and how it ended.

    ``status`` is ``"ok"`` (a complete ``metrics.json``) or ``"failed"``; ``metrics`` is the
    parsed ``metrics.json`` (empty when failed); ``error`` holds the tail of its log.
    ``role`` is ``"method"`` for compared runs and ``"pretrained"`` for teachers and
    previous models trained once and reused.
    """

    run_dir: Path
    method: str
    seed: int | None
    status: str = "ok"
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    role: str = "method"
    log: Path | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def read_metrics(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run's ``metrics.json`` if it is complete (valid JSON with method, seed, last, best).

    Returns ``None`` for a missing, unreadable or incomplete file: such a run did not finish.
    """
    path = Path(run_dir) / METRICS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or any(key not in data for key in REQUIRED_KEYS):
        return None
    if not isinstance(data["last"], dict) or not isinstance(data["best"], dict):
        return None
    return data


def run_config(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run's resolved Hydra config (``.hydra/config.yaml``) as a dict, or ``None``."""
    path = Path(run_dir) / ".hydra" / "config.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    try:
        loaded = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:  # a corrupt file is reported as "no config", the run as failed
        return None
    return loaded if isinstance(loaded, dict) else None


def read_run(run_dir: str | os.PathLike, *, role: str = "method") -> RunRecord:
    """A :class:`RunRecord` for ``run_dir``: ``ok`` with its metrics, or ``failed``.

    A failed run takes its method and seed from ``.hydra/config.yaml`` (falling back to the
    directory name) and its error from the tail of the Hydra job log in the run directory.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run_dir {str(run_dir)!r} is not a directory")
    metrics = read_metrics(run_dir)
    if metrics is not None:
        return RunRecord(
            run_dir, str(metrics["method"]), _as_seed(metrics["seed"]), "ok", metrics, role=role
        )
    config = run_config(run_dir) or {}
    from ._io import tail_lines

    logs = sorted(run_dir.glob("*.log"))
    error = tail_lines(logs[0]) if logs else ""
    return RunRecord(
        run_dir,
        str(config.get("method", run_dir.name)),
        _as_seed(config.get("seed")),
        "failed",
        error=error or "no metrics.json and no log in the run directory",
        role=role,
        log=logs[0] if logs else None,
    )


def _as_seed(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _is_training_run(run_dir: Path) -> bool:
    if (run_dir / METRICS_FILE).is_file():
        return True
    config = run_config(run_dir)
    return config is not None and "method" in config and "seed" in config


def find_run_dirs(paths: list[str | os.PathLike]) -> list[Path]:
    """Every training run directory at or below ``paths`` (sorted, without duplicates).

    A run directory holds a ``metrics.json`` or a ``.hydra/config.yaml`` with top-level
    ``method`` and ``seed`` keys (a run that started and crashed).
    """
    found: set[Path] = set()
    for given in paths:
        root = Path(given)
        if not root.is_dir():
            raise FileNotFoundError(f"run directory {str(root)!r} does not exist")
        candidates = {root}
        candidates.update(p.parent for p in root.rglob(METRICS_FILE))
        candidates.update(p.parent.parent for p in root.rglob(".hydra/config.yaml"))
        found.update(c.resolve() for c in candidates if _is_training_run(c))
    return sorted(found)


def load_runs(paths: list[str | os.PathLike]) -> list[RunRecord]:
    """:func:`read_run` for every run directory :func:`find_run_dirs` finds below ``paths``."""
    return [read_run(d) for d in find_run_dirs(paths)]
