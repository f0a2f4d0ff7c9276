"""`ArraySource`: a whole dataset held as numpy arrays, plus what a model needs to know."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

TASKS = ("multiclass", "binary")
_CHECK_CHUNK = 1 << 22  # values per np.isfinite pass (bounds the temporary mask's memory)


def _integer_labels(name: str, y) -> np.ndarray:
    """``y`` as int64, refusing labels that a cast would change (1.5 -> 1, NaN)."""
    y = np.asarray(y)
    if y.dtype.kind in "iub":
        return np.ascontiguousarray(y, dtype=np.int64)
    try:
        numbers = y.astype(np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{name}: y must hold integer class labels, got dtype {y.dtype} ({error})"
        ) from error
    changed = ~np.isfinite(numbers) | (numbers != np.round(numbers))
    if changed.any():
        index = int(np.flatnonzero(changed.reshape(-1))[0])
        raise ValueError(
            f"{name}: y must hold whole-number class labels; sample {index} has "
            f"{numbers.reshape(-1)[index].item()!r} ({int(changed.sum())} such label(s))"
        )
    return np.ascontiguousarray(numbers, dtype=np.int64)


def _check_finite(name: str, X: np.ndarray) -> None:
    """ValueError naming the first sample and position of a NaN or infinite value in ``X``
    (checked in chunks of rows, so no full-size mask is allocated)."""
    if X.ndim == 0 or X.size == 0:
        return
    flat = X.reshape(len(X), -1)
    rows = max(1, _CHECK_CHUNK // max(1, flat.shape[1]))
    for start in range(0, len(flat), rows):
        finite = np.isfinite(flat[start : start + rows])
        if not finite.all():
            row, column = (int(i) for i in np.argwhere(~finite)[0])
            position = np.unravel_index(column, X.shape[1:]) if X.ndim > 1 else ()
            raise ValueError(
                f"{name}: X must be finite; sample {start + row} holds "
                f"{flat[start + row, column].item()} at position {tuple(int(p) for p in position)} "
                "(NaN, inf, or a value beyond the float32 range)"
            )


@dataclass(eq=False)
class ArraySource:
    """A full dataset in memory.

    Attributes:
        name: short dataset name (``"digits"``, ``"cifar10"``...).
        X: ``float32`` array of shape ``(N, *input_shape)``.
        y: ``int64`` labels in ``0..num_classes-1``, shape ``(N,)``.
        num_classes: number of distinct label values (2 for a binary task).
        input_shape: per-sample shape, e.g. ``(64,)``, ``(1, 8, 8)``, ``(3, 32, 32)``.
        task: ``"multiclass"`` or ``"binary"``.
        test_index: indices of an official test split, or ``None`` to split at random.
        classes: optional original label value (or name) of each class index.
        image_shape: the ``(C, H, W)`` image or ``(C, L)`` signal a sample is, e.g.
            ``(1, 28, 28)`` for flat ``(784,)`` MNIST vectors; defaults to ``input_shape``
            when that has 2 or 3 dimensions, else ``None`` (a feature vector).
    """

    name: str
    X: np.ndarray
    y: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]
    task: str = "multiclass"
    test_index: np.ndarray | None = None
    classes: tuple | None = field(default=None)
    image_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        self.X = np.ascontiguousarray(self.X, dtype=np.float32)
        self.y = _integer_labels(self.name, self.y)
        _check_finite(self.name, self.X)
        self.input_shape = tuple(int(d) for d in self.input_shape)
        if self.X.shape[1:] != self.input_shape:
            raise ValueError(
                f"X has per-sample shape {self.X.shape[1:]}, but input_shape={self.input_shape}"
            )
        if self.image_shape is None and len(self.input_shape) in (2, 3):
            self.image_shape = self.input_shape
        if self.image_shape is not None:
            self.image_shape = tuple(int(d) for d in self.image_shape)
            if len(self.image_shape) not in (2, 3) or np.prod(self.image_shape) != np.prod(
                self.input_shape
            ):
                raise ValueError(
                    f"image_shape={self.image_shape}; expected (C, H, W) or (C, L) holding "
                    f"input_shape={self.input_shape}"
                )
        if self.y.shape != (self.X.shape[0],):
            raise ValueError(f"y has shape {self.y.shape}; expected ({self.X.shape[0]},)")
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r}; allowed: {TASKS}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes={self.num_classes}; a dataset needs at least 2 classes")
        if self.task == "binary" and self.num_classes != 2:
            raise ValueError(f"task='binary' needs num_classes=2, got {self.num_classes}")
        if len(self.y) and (self.y.min() < 0 or self.y.max() >= self.num_classes):
            raise ValueError(
                f"labels must lie in 0..{self.num_classes - 1}; "
                f"found range {self.y.min()}..{self.y.max()}"
            )
        if self.test_index is not None:
            self.test_index = np.asarray(self.test_index, dtype=np.int64)
            bad = (self.test_index < 0) | (self.test_index >= len(self.y))
            if bad.any():
                raise ValueError(
                    f"test_index has {int(bad.sum())} entries outside 0..{len(self.y) - 1}"
                )

    def __len__(self) -> int:
        return len(self.y)

    @cached_property
    def fingerprint(self) -> str:
        """Hex sha256 over the name, the shapes and the bytes of ``X`` and ``y``."""
        digest = hashlib.sha256()
        digest.update(self.name.encode())
        digest.update(repr((self.X.shape, self.y.shape, self.num_classes, self.task)).encode())
        digest.update(memoryview(self.X).cast("B"))
        digest.update(memoryview(self.y).cast("B"))
        if self.test_index is not None:
            digest.update(memoryview(np.ascontiguousarray(self.test_index)).cast("B"))
        return digest.hexdigest()
