"""An on-disk, append-only store of a model version's predictions, keyed by sample id.

Layout (one directory per model version, memory-mapped NumPy files)::

    <root>/
      v0001/
        ids.npy          (N,) int64 sample ids, strictly increasing
        probs.npy        (N,) float32 P(y=1) (binary) or (N, K) float32 class probabilities
        manifest.json    written last: version, checkpoint hash, data fingerprint, file hashes
      .partial-v0002-*/  a write that never finished; never read, safe to delete

A version is written into a ``.partial-*`` directory, the manifest last, and only then
renamed to ``vNNNN`` with ``os.replace``: a crash at any point leaves the store exactly as
it was before the write (plus an ignored ``.partial-*`` directory). Versions are never
overwritten. Reading checks the manifest against what the caller expects (version,
checkpoint hash, data fingerprint) and refuses a stale or mismatched store; the manifest
must list exactly ``ids.npy`` and ``probs.npy``, inside the version directory, each with
its SHA-256 (the rule of :mod:`softlabel._manifest`), and both are hashed on read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from softlabel._manifest import check_listed_files, listed_file_paths

__all__ = [
    "PredictionStore",
    "StaleStoreError",
    "StoredVersion",
    "VersionManifest",
    "check_logged_probabilities",
    "ids_fingerprint",
    "logged_predictions_fingerprint",
]

FORMAT = "softlabel-prediction-store"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
IDS_NAME = "ids.npy"
PROBS_NAME = "probs.npy"
PARTIAL_PREFIX = ".partial-"
TASKS = ("binary", "multiclass")
#: the data files of a version: what a reader opens, so what its manifest must list and hash
DATA_FILES = (IDS_NAME, PROBS_NAME)
_FILE_FIELDS = ("dtype", "sha256", "shape")


class StaleStoreError(ValueError):
    """The stored predictions do not belong to the model or data the caller expects."""


@dataclass(frozen=True)
class VersionManifest:
    """What one stored version holds and where its predictions came from."""

    version: int
    task: str
    num_samples: int
    num_classes: int
    checkpoint_sha256: str
    data_fingerprint: str
    source: str = "model"
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: str = ""
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_json(cls, path: Path) -> VersionManifest:
        """Read ``path``; ValueError unless it is a manifest of this format whose ``files``
        list exactly :data:`DATA_FILES`, each with its shape, dtype and SHA-256
        (the rule of :mod:`softlabel._manifest`)."""
        try:
            payload = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(
                f"prediction store manifest {str(path)!r} is unreadable: {error}"
            ) from error
        if not isinstance(payload, dict):
            raise ValueError(f"prediction store manifest {str(path)!r} is not a JSON object")
        if payload.get("format") != FORMAT or payload.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{str(path)!r} is not a {FORMAT} manifest of format_version {FORMAT_VERSION} "
                f"(format={payload.get('format')!r}, format_version={payload.get('format_version')!r})"
            )
        files = payload.get("files")
        check_listed_files(files, DATA_FILES, manifest=repr(str(path)))
        for name, entry in files.items():
            if (
                not isinstance(entry, dict)
                or sorted(entry) != sorted(_FILE_FIELDS)
                or not _is_sha256(entry["sha256"])
            ):
                raise ValueError(
                    f"prediction store manifest {str(path)!r}: files entry {name!r} must hold "
                    f"exactly {list(_FILE_FIELDS)} with sha256 a 64-digit hex digest, got {entry!r}"
                )
        try:
            return cls(**payload)
        except TypeError as error:
            raise ValueError(
                f"prediction store manifest {str(path)!r} has missing or unknown fields: {error}"
            ) from error


def _is_sha256(value: Any) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


def ids_fingerprint(ids: np.ndarray) -> str:
    """SHA-256 of the sorted int64 sample ids: the default fingerprint of imported logs."""
    ordered = np.sort(np.asarray(ids, dtype=np.int64))
    return "ids-sha256:" + hashlib.sha256(ordered.tobytes()).hexdigest()


def logged_predictions_fingerprint(ids: np.ndarray, probs: np.ndarray) -> str:
    """``log-sha256:`` + SHA-256 of the logged (id, prediction) pairs, sorted by id.

    The hashed bytes are the shapes, then the int64 ids and the float32 predictions in id
    order: the identity of predictions that did not come from a checkpoint we have. Any
    edit of a logged value (or of which samples were logged) changes it.
    """
    ids = np.asarray(ids, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float32)
    order = np.argsort(ids, kind="stable")
    digest = hashlib.sha256()
    for array in (ids[order], probs[order]):
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return "log-sha256:" + digest.hexdigest()


def check_logged_probabilities(
    values: Any, column: str, path: str | os.PathLike[str]
) -> np.ndarray:
    """``values`` of ``column`` in the log ``path`` as float32, if they are probabilities.

    The column must be numeric (not boolean), without missing values, and in ``[0, 1]``;
    ValueError naming the column and the file otherwise.
    """
    import pandas as pd

    where = f"prediction column {column!r} in {os.fspath(path)!r}"
    series = values if isinstance(values, pd.Series) else pd.Series(np.asarray(values))
    if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series):
        raise ValueError(
            f"{where} must hold numbers (logged probabilities in [0, 1]), got dtype {series.dtype}"
        )
    array = series.to_numpy(dtype=np.float64, na_value=np.nan)
    missing = int(np.isnan(array).sum())
    if missing:
        raise ValueError(f"{where} has {missing} missing (NaN) value(s); every row needs one")
    outside = (array < 0.0) | (array > 1.0)
    if outside.any():
        raise ValueError(
            f"{where} must hold probabilities in [0, 1]; {int(outside.sum())} value(s) are "
            f"outside, e.g. {array[outside][:3].tolist()}"
        )
    return array.astype(np.float32)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _save_array(path: Path, array: np.ndarray) -> dict[str, Any]:
    with open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())
    return {"shape": list(array.shape), "dtype": str(array.dtype), "sha256": _sha256(path)}


def _write_manifest(directory: Path, manifest: VersionManifest) -> None:
    """Write ``manifest.json`` (the last file of a version: its presence marks completeness)."""
    path = directory / MANIFEST_NAME
    with open(path, "w") as handle:
        json.dump(asdict(manifest), handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _validate_predictions(
    ids: np.ndarray, probs: np.ndarray, task: str
) -> tuple[np.ndarray, np.ndarray, int]:
    """Check ids/probabilities; return them sorted by id, and the number of classes."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    ids = np.asarray(ids)
    probs = np.asarray(probs, dtype=np.float32)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(
            f"ids must be a 1-D integer array, got shape {ids.shape} dtype {ids.dtype}"
        )
    ids = ids.astype(np.int64)
    if len(np.unique(ids)) != len(ids):
        raise ValueError(
            f"ids must be unique sample ids; {len(ids) - len(np.unique(ids))} duplicates"
        )
    expected_ndim = 1 if task == "binary" else 2
    if probs.ndim != expected_ndim or probs.shape[0] != len(ids):
        raise ValueError(
            f"probs must have shape ({len(ids)},) for binary or ({len(ids)}, K) for multiclass; "
            f"got {probs.shape} for task={task!r}"
        )
    if not np.all(np.isfinite(probs)) or probs.min(initial=0.0) < 0 or probs.max(initial=0.0) > 1:
        raise ValueError("probs must be finite probabilities in [0, 1]")
    if task == "multiclass":
        if probs.shape[1] < 2:
            raise ValueError(f"multiclass probs need K >= 2 columns, got {probs.shape[1]}")
        worst = float(np.abs(probs.sum(axis=1) - 1.0).max(initial=0.0))
        if worst > 1e-3:
            raise ValueError(
                f"multiclass probs must sum to 1 per row (worst deviation {worst:.3g})"
            )
    order = np.argsort(ids, kind="stable")
    return ids[order], probs[order], (1 if task == "binary" else probs.shape[1])


class StoredVersion:
    """One complete stored version: memory-mapped ids and probabilities, looked up by sample id."""

    def __init__(
        self, directory: Path, manifest: VersionManifest, paths: dict[str, Path] | None = None
    ) -> None:
        self.directory = directory
        self.manifest = manifest
        if paths is None:  # opened without PredictionStore.read: the manifest rule still holds
            paths = listed_file_paths(
                directory, manifest.files, DATA_FILES, manifest=repr(str(directory / MANIFEST_NAME))
            )
        self.ids = np.load(paths[IDS_NAME], mmap_mode="r", allow_pickle=False)
        self.probs = np.load(paths[PROBS_NAME], mmap_mode="r", allow_pickle=False)

    def __len__(self) -> int:
        return len(self.ids)

    def lookup(self, index: Any) -> np.ndarray:
        """Probabilities of the samples with ids ``index`` (any int array-like), in that order.

        Raises KeyError naming the ids that the version holds no prediction for.
        """
        wanted = np.asarray(index.cpu() if hasattr(index, "cpu") else index, dtype=np.int64)
        flat = wanted.reshape(-1)
        pos = np.searchsorted(self.ids, flat)
        pos_clipped = np.minimum(pos, len(self.ids) - 1)
        found = (pos < len(self.ids)) & (np.asarray(self.ids)[pos_clipped] == flat)
        if not found.all():
            missing = flat[~found]
            raise KeyError(
                f"prediction store version {self.manifest.version} has no prediction for "
                f"{len(missing)} sample id(s), e.g. {missing[:5].tolist()}"
            )
        values = np.asarray(self.probs[pos_clipped])
        return values.reshape(*wanted.shape, *self.probs.shape[1:])


class PredictionStore:
    """Append-only store of per-version predictions under ``root`` (created if missing)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"root must be a directory, got the file {str(self.root)!r}")
        self.root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _check_version(version: int) -> int:
        if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 1:
            raise ValueError(f"version must be an int >= 1, got {version!r}")
        return int(version)

    def path(self, version: int) -> Path:
        """The directory of ``version`` (whether or not it exists)."""
        return self.root / f"v{self._check_version(version):04d}"

    def versions(self) -> list[int]:
        """The complete versions (directories with a manifest), ascending."""
        found = []
        for entry in self.root.iterdir():
            name = entry.name
            if entry.is_dir() and name.startswith("v") and name[1:].isdigit():
                if (entry / MANIFEST_NAME).is_file():
                    found.append(int(name[1:]))
        return sorted(found)

    def partial_writes(self) -> list[Path]:
        """Directories of writes that never completed (ignored by every reader)."""
        return sorted(p for p in self.root.iterdir() if p.name.startswith(PARTIAL_PREFIX))

    def remove_partial_writes(self) -> int:
        """Delete the directories of unfinished writes; return how many were removed."""
        partial = self.partial_writes()
        for directory in partial:
            shutil.rmtree(directory)
        return len(partial)

    def write(
        self,
        version: int,
        ids: np.ndarray,
        probs: np.ndarray,
        *,
        task: str,
        checkpoint_sha256: str,
        data_fingerprint: str,
        source: str = "model",
    ) -> VersionManifest:
        """Atomically add ``version``: ``probs[i]`` is the prediction for sample ``ids[i]``.

        ``probs`` is ``(N,)`` P(y=1) for binary or ``(N, K)`` for multiclass. Raises
        ValueError if the version exists (the store is append-only) or the input is invalid.
        """
        final = self.path(version)
        for name, value in (
            ("checkpoint_sha256", checkpoint_sha256),
            ("data_fingerprint", data_fingerprint),
        ):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        if final.exists():
            raise ValueError(
                f"version {version} already exists in {str(self.root)!r}; the prediction store is "
                "append-only (write a new version or use a new store)"
            )
        ids, probs, num_classes = _validate_predictions(ids, probs, task)
        tmp = self.root / f"{PARTIAL_PREFIX}v{version:04d}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        files = {
            IDS_NAME: _save_array(tmp / IDS_NAME, ids),
            PROBS_NAME: _save_array(tmp / PROBS_NAME, probs),
        }
        manifest = VersionManifest(
            version=int(version),
            task=task,
            num_samples=len(ids),
            num_classes=num_classes,
            checkpoint_sha256=checkpoint_sha256,
            data_fingerprint=data_fingerprint,
            source=source,
            files=files,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        _write_manifest(tmp, manifest)
        _fsync_dir(tmp)
        os.replace(tmp, final)
        _fsync_dir(self.root)
        return manifest

    def manifest(self, version: int) -> VersionManifest:
        """The manifest of a complete version; FileNotFoundError/ValueError otherwise."""
        directory = self.path(version)
        if not directory.is_dir():
            partial = [
                p.name
                for p in self.partial_writes()
                if p.name.startswith(f"{PARTIAL_PREFIX}v{version:04d}-")
            ]
            hint = f"; unfinished writes of it (ignored): {partial}" if partial else ""
            raise FileNotFoundError(
                f"version {version} is not in the prediction store {str(self.root)!r} "
                f"(complete versions: {self.versions()}){hint}"
            )
        path = directory / MANIFEST_NAME
        if not path.is_file():
            raise ValueError(
                f"version {version} in {str(self.root)!r} is incomplete (no {MANIFEST_NAME}): "
                "a write did not finish; delete the directory and write the version again"
            )
        manifest = VersionManifest.from_json(path)
        if manifest.version != version:
            raise StaleStoreError(
                f"{str(path)!r} records version {manifest.version}, but it sits in the directory "
                f"of version {version}; the store was edited by hand"
            )
        return manifest

    def read(
        self,
        version: int,
        *,
        checkpoint_sha256: str | None = None,
        data_fingerprint: str | None = None,
        task: str | None = None,
        verify_files: bool = True,
    ) -> StoredVersion:
        """Open ``version`` for lookups, refusing it (StaleStoreError) if the manifest does not match.

        Each expectation given (checkpoint hash, data fingerprint, task) must equal the
        manifest's. The manifest must list the two arrays (and nothing else) inside the
        version directory (:func:`softlabel._manifest.listed_file_paths`); with
        ``verify_files`` (default) their SHA-256 are checked too.
        """
        manifest = self.manifest(version)
        expected = {
            "checkpoint_sha256": checkpoint_sha256,
            "data_fingerprint": data_fingerprint,
            "task": task,
        }
        for name, want in expected.items():
            have = getattr(manifest, name)
            if want is not None and want != have:
                raise StaleStoreError(
                    f"prediction store {str(self.root)!r} version {version} is stale or mismatched: "
                    f"its {name} is {have!r} but {want!r} was expected; the stored predictions were "
                    "made by another model or on other data. Write them again for this run."
                )
        directory = self.path(version)
        paths = listed_file_paths(
            directory, manifest.files, DATA_FILES, manifest=repr(str(directory / MANIFEST_NAME))
        )
        for name, path in paths.items():
            if not path.is_file():
                raise ValueError(
                    f"prediction store file {str(path)!r} listed in the manifest is missing"
                )
            if verify_files and _sha256(path) != manifest.files[name]["sha256"]:
                raise StaleStoreError(
                    f"prediction store file {str(path)!r} does not match its manifest hash"
                )
        stored = StoredVersion(directory, manifest, paths)
        if len(stored.ids) != manifest.num_samples:
            raise ValueError(
                f"{str(directory)!r}: ids hold {len(stored.ids)} rows, manifest says {manifest.num_samples}"
            )
        return stored

    def import_predictions(
        self,
        version: int,
        ids: np.ndarray,
        probs: np.ndarray,
        *,
        source: str,
        task: str = "binary",
        checkpoint_sha256: str | None = None,
        data_fingerprint: str | None = None,
    ) -> VersionManifest:
        """Add ``version`` from logged predictions (made by a model we may not have).

        ``checkpoint_sha256`` is what the log says about the serving model; without it the
        manifest records :func:`logged_predictions_fingerprint` of the (id, prediction)
        pairs, so a reader that recomputes it from the log refuses a store whose logged
        values changed. ``data_fingerprint`` defaults to :func:`ids_fingerprint`.
        """
        ids = np.asarray(ids)
        probs = np.asarray(probs, dtype=np.float32)
        if checkpoint_sha256 is None:
            checkpoint_sha256 = logged_predictions_fingerprint(ids, probs)
        fingerprint = data_fingerprint if data_fingerprint is not None else ids_fingerprint(ids)
        return self.write(
            version,
            ids,
            probs,
            task=task,
            checkpoint_sha256=checkpoint_sha256,
            data_fingerprint=fingerprint,
            source=source,
        )

    def import_log(
        self,
        path: str | os.PathLike[str],
        id_column: str,
        prediction_column: str | Sequence[str],
        version: int,
        *,
        checkpoint_sha256: str | None = None,
        data_fingerprint: str | None = None,
        task: str | None = None,
        file_format: str | None = None,
    ) -> VersionManifest:
        """Add ``version`` from a prediction log the serving system wrote (CSV or Parquet).

        ``prediction_column`` is one column of P(y=1) (binary) or K columns of class
        probabilities (multiclass; a list of names). ``checkpoint_sha256`` identifies the
        model that served (any non-empty string, e.g. its checkpoint hash); without it, the
        :func:`logged_predictions_fingerprint` of the log. The fingerprint defaults to
        :func:`ids_fingerprint` of the logged ids.
        """
        from softlabel.loop.tables import read_table

        frame = read_table(path, file_format=file_format)
        columns = (
            [prediction_column] if isinstance(prediction_column, str) else list(prediction_column)
        )
        if not columns:
            raise ValueError("prediction_column must name at least one column")
        for name in [id_column, *columns]:
            if name not in frame.columns:
                raise ValueError(
                    f"column {name!r} not in {str(path)!r}; columns are {list(frame.columns)}"
                )
        if frame[id_column].isna().any():
            raise ValueError(f"{str(path)!r} has missing values in id_column {id_column!r}")
        ids = frame[id_column].to_numpy()
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(
                f"id_column {id_column!r} must hold integer sample ids, got dtype {ids.dtype}"
            )
        if task is None:
            task = "binary" if len(columns) == 1 else "multiclass"
        if task == "binary" and len(columns) != 1:
            raise ValueError(f"binary logs have one prediction column, got {columns}")
        probs = np.stack(
            [check_logged_probabilities(frame[name], name, path) for name in columns],
            axis=1,
        )
        probs = probs[:, 0] if task == "binary" else probs
        return self.import_predictions(
            version,
            ids,
            probs,
            source=f"log:{os.fspath(path)}",
            task=task,
            checkpoint_sha256=checkpoint_sha256,
            data_fingerprint=data_fingerprint,
        )
