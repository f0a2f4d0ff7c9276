"""A data stream for the loop: chunks ("days") in time order plus a fixed held-out set.

Each chunk holds inputs ``x``, labels ``y`` and stable global sample ``ids`` (the keys of
the prediction store and the ``index`` of every dataset item ``(x, y, index)``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["Chunk", "ChunkDataset", "Stream"]

TASKS = ("binary", "multiclass")


@dataclass(frozen=True)
class Chunk:
    """One chunk of the stream: ``x`` (N, ...) float32, ``y`` (N,), ``ids`` (N,) int64 unique.

    ``logged_probs``: what the serving model predicted for each sample, as logged with the
    data ((N,) P(y=1) for binary), or None if the stream has no logged predictions. It is
    not part of the data :attr:`fingerprint`.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    ids: np.ndarray
    logged_probs: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        if len(self.x) != n or len(self.y) != n:
            raise ValueError(
                f"chunk {self.name!r}: x, y and ids must have the same length, "
                f"got {len(self.x)}, {len(self.y)}, {n}"
            )
        if n == 0:
            raise ValueError(f"chunk {self.name!r} is empty")
        if len(np.unique(self.ids)) != n:
            raise ValueError(f"chunk {self.name!r}: sample ids must be unique")
        if self.logged_probs is not None and len(self.logged_probs) != n:
            raise ValueError(
                f"chunk {self.name!r}: logged_probs must have one row per sample ({n}), "
                f"got {len(self.logged_probs)}"
            )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def fingerprint(self) -> str:
        """SHA-256 over the ids, inputs and labels (the data fingerprint of the store)."""
        digest = hashlib.sha256()
        for array in (self.ids.astype(np.int64), self.x.astype(np.float32), self.y):
            digest.update(str(array.shape).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        return "sha256:" + digest.hexdigest()

    def dataset(self, task: str) -> ChunkDataset:
        return ChunkDataset(self, task)


class ChunkDataset(Dataset):
    """Items ``(x, y, index)``: float32 inputs, long (multiclass) or float (binary) labels."""

    def __init__(self, chunk: Chunk, task: str) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.x = torch.tensor(np.asarray(chunk.x, dtype=np.float32))
        dtype = torch.float32 if task == "binary" else torch.long
        self.y = torch.tensor(np.asarray(chunk.y)).to(dtype)
        self.ids = torch.tensor(np.asarray(chunk.ids, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i], self.ids[i]


@dataclass(frozen=True)
class Stream:
    """Chunks in time order, a held-out chunk, and what a model needs to know about them.

    ``model_kwargs`` are extra constructor arguments for models that accept them (e.g. the
    number of categorical fields and hash buckets of a CTR stream). ``logged_column`` names
    the log column the chunks' ``logged_probs`` came from (None: the stream has none).
    """

    name: str
    task: str
    num_classes: int
    chunks: list[Chunk]
    holdout: Chunk
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    logged_column: str | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.task == "binary" and self.num_classes != 1:
            raise ValueError(
                f"binary streams have num_classes=1 (one logit), got {self.num_classes}"
            )
        if self.task == "multiclass" and self.num_classes < 2:
            raise ValueError(f"multiclass streams need num_classes >= 2, got {self.num_classes}")
        if len(self.chunks) < 2:
            raise ValueError(f"a stream needs at least 2 chunks, got {len(self.chunks)}")
        seen: set[int] = set()
        for chunk in [*self.chunks, self.holdout]:
            ids = set(chunk.ids.tolist())
            if ids & seen:
                raise ValueError(f"chunk {chunk.name!r} shares sample ids with an earlier chunk")
            seen |= ids
            if (chunk.logged_probs is None) != (self.logged_column is None):
                raise ValueError(
                    f"chunk {chunk.name!r}: logged_probs must be given exactly when the stream's "
                    f"logged_column is (logged_column={self.logged_column!r})"
                )

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.holdout.x.shape[1:])
