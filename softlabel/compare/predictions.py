"""Saved test predictions of a run (``predictions_test*.npz``), read without unpickling.

A predictions file holds ``probs`` ((N, K) class probabilities, or (N,) P(y=1) for a binary
task), ``target`` ((N,) integer labels) and, from the training app, ``index`` ((N,) the
dataset index of each test example). The file is read with ``allow_pickle=False``: an
object array (which only unpickling could load) is refused with the file's name.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .runs import PREDICTIONS_FILES, RunRecord

__all__ = [
    "Predictions",
    "PredictionsError",
    "read_predictions",
    "run_predictions",
    "same_test_set",
]


class PredictionsError(ValueError):
    """A predictions file that cannot be used (unreadable, object arrays, wrong shapes)."""


@dataclass(frozen=True)
class Predictions:
    """One run's test predictions: ``probs`` (N, K) or (N,), ``target`` (N,) int64,
    ``index`` (N,) int64 or ``None`` when the file has none, and the file they came from."""

    probs: np.ndarray
    target: np.ndarray
    index: np.ndarray | None
    path: Path

    @property
    def binary(self) -> bool:
        return self.probs.ndim == 1

    def aligned(self) -> Predictions:
        """The same predictions ordered by ``index`` (unchanged when there is none)."""
        if self.index is None:
            return self
        order = np.argsort(self.index, kind="stable")
        return Predictions(self.probs[order], self.target[order], self.index[order], self.path)


def read_predictions(path: str | os.PathLike) -> Predictions:
    """Read and check a predictions file; :class:`PredictionsError` names the file.

    Checks are O(N): numeric arrays of matching length, probabilities finite in [0, 1],
    integer labels in range, ``index`` (when present) without duplicates.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = {"probs", "target"} - set(data.files)
            if missing:
                raise PredictionsError(
                    f"predictions file {str(path)!r} lacks arrays {sorted(missing)}; "
                    f"it has {data.files}"
                )
            arrays = {name: data[name] for name in ("probs", "target", "index") if name in data}
    except PredictionsError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        # numpy refuses object arrays without unpickling ("Object arrays cannot be loaded
        # when allow_pickle=False"); a truncated or foreign file fails to open
        raise PredictionsError(f"predictions file {str(path)!r} cannot be read: {error}") from None
    probs, target, index = arrays["probs"], arrays["target"], arrays.get("index")
    if probs.dtype.kind not in "fiu" or probs.ndim not in (1, 2):
        raise PredictionsError(
            f"predictions file {str(path)!r}: probs must be a numeric (N,) or (N, K) array, "
            f"got dtype {probs.dtype} and shape {probs.shape}"
        )
    n = probs.shape[0]
    for name, array in (("target", target), ("index", index)):
        if array is None:
            continue
        if array.shape != (n,):
            raise PredictionsError(
                f"predictions file {str(path)!r}: {name} must have shape ({n},), got {array.shape}"
            )
        if array.dtype.kind not in "iub" and not (
            array.dtype.kind == "f" and np.all(array == np.round(array))
        ):
            raise PredictionsError(
                f"predictions file {str(path)!r}: {name} must hold integers, got dtype {array.dtype}"
            )
    probs = probs.astype(np.float64, copy=False)
    if n and (not np.all(np.isfinite(probs)) or probs.min() < 0 or probs.max() > 1):
        raise PredictionsError(
            f"predictions file {str(path)!r}: probs must be finite probabilities in [0, 1]"
        )
    target = target.astype(np.int64)
    high = 1 if probs.ndim == 1 else probs.shape[1] - 1
    if n and (target.min() < 0 or target.max() > high):
        raise PredictionsError(
            f"predictions file {str(path)!r}: target labels must be in [0, {high}], "
            f"got [{target.min()}, {target.max()}]"
        )
    if index is not None:
        index = index.astype(np.int64)
        if np.unique(index).size != n:
            raise PredictionsError(f"predictions file {str(path)!r}: index has duplicates")
    return Predictions(probs, target, index, path)


def run_predictions(
    records: Iterable[RunRecord], checkpoint: str
) -> tuple[dict[Path, Predictions], list[str]]:
    """Predictions of ``checkpoint`` (``best`` or ``last``) of every finished method run that
    saved them, by run directory, and one problem line per file that could not be used
    (that run is left out; the others are kept)."""
    if checkpoint not in PREDICTIONS_FILES:
        raise ValueError(
            f"checkpoint must be one of {sorted(PREDICTIONS_FILES)}, got {checkpoint!r}"
        )
    found: dict[Path, Predictions] = {}
    problems: list[str] = []
    for record in records:
        path = record.run_dir / PREDICTIONS_FILES[checkpoint]
        if not (record.ok and record.role == "method" and path.is_file()):
            continue
        try:
            found[record.run_dir] = read_predictions(path)
        except (PredictionsError, OSError) as error:
            problems.append(f"skipped the predictions of run {record.run_dir}: {error}")
    return found, problems


def same_test_set(runs: Sequence[Predictions]) -> str:
    """``""`` when every run predicted the same test examples (same labels; same indices
    where both files have them), else why not. Compares the :meth:`Predictions.aligned` forms."""
    first = runs[0]
    for other in runs[1:]:
        if first.probs.shape[1:] != other.probs.shape[1:]:
            return f"probs of shape {first.probs.shape} against {other.probs.shape}"
        if first.target.shape != other.target.shape:
            return f"{first.target.size} test examples against {other.target.size}"
        if first.index is not None and other.index is not None:
            differ = np.flatnonzero(first.index != other.index)
            if differ.size:
                at = differ[0]
                return (
                    f"other dataset indices: {differ.size} of {first.index.size} differ, "
                    f"e.g. {first.index[at]} against {other.index[at]}"
                )
        differ = np.flatnonzero(first.target != other.target)
        if differ.size:
            return f"other labels: {differ.size} of {first.target.size} test examples differ"
    return ""
