"""A torch ``Dataset`` over some rows of an array, yielding ``(x, y, index)``; the
normalisation statistics; the epoch-seeded train sampler."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from softlabel.data.augment import BatchAugmentation

NORMALIZE_MODES = ("channel", "feature", "none")
#: default floor on a standard deviation (``data.min_std``), in the data's units
MIN_STD = 1e-3


def feature_statistics(
    X: np.ndarray,
    rows: np.ndarray,
    mode: str | None = None,
    channels: int | None = None,
    min_std: float = MIN_STD,
    chunk: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation over ``X[rows]``, shaped like one sample.

    ``mode="feature"``: one pair per feature (per element of a sample). ``mode="channel"``:
    one pair per channel, the sample seen as ``channels`` equal blocks (``(C, H, W)`` or
    ``(C, L)`` inputs, or flat images of ``channels`` planes); ``channels=None`` takes
    ``X.shape[1]`` for N-D samples and 1 for vectors. ``mode=None``: ``feature`` for vectors,
    ``channel`` otherwise. Two passes in float64 over chunks of rows (no full copy of ``X``).

    A standard deviation of exactly 0 (constant on these rows) is replaced by 1, so that
    feature is only centred; any other is raised to at least ``min_std``.
    """
    if mode is None:
        mode = "feature" if X.ndim == 2 else "channel"
    if mode not in NORMALIZE_MODES[:2]:
        raise ValueError(f"mode={mode!r}; allowed: {NORMALIZE_MODES[:2]}")
    if float(min_std) < 0:
        raise ValueError(f"min_std={min_std}; allowed: a number >= 0")
    per_sample = int(np.prod(X.shape[1:]))
    if mode == "feature":
        groups = per_sample
    else:
        groups = int(channels) if channels is not None else (X.shape[1] if X.ndim > 2 else 1)
        if groups < 1 or per_sample % groups:
            raise ValueError(f"channels={channels} does not divide a sample of {per_sample}")
    blocks_view = X.reshape(len(X), groups, per_sample // groups)
    blocks = [rows[start : start + chunk] for start in range(0, len(rows), chunk)]
    count = len(rows) * (per_sample // groups)
    total = sum(blocks_view[b].sum(axis=(0, 2), dtype=np.float64) for b in blocks)
    mean = total / count
    squares = sum(((blocks_view[b] - mean[None, :, None]) ** 2).sum(axis=(0, 2)) for b in blocks)
    std = np.sqrt(squares / count)
    std = np.where(std == 0, 1.0, np.maximum(std, float(min_std)))
    expand = (groups, per_sample // groups)
    mean = np.broadcast_to(mean[:, None], expand).reshape(X.shape[1:])
    std = np.broadcast_to(std[:, None], expand).reshape(X.shape[1:])
    return mean.astype(np.float32), std.astype(np.float32)


class IndexedArrayDataset(Dataset):
    """Rows ``indices`` of ``X`` with labels from ``labels``; item ``i`` is
    ``(x, y, index)`` with ``index = indices[i]`` (the position in the full dataset) and
    ``x = (augment(X[index]) - mean) / std`` as float32.

    A key is a position ``i`` or a pair ``(i, epoch)`` (from :class:`EpochShuffleSampler`
    with ``with_epoch=True``); a plain position uses ``self.epoch``. The DataLoader fetches a
    batch through ``__getitems__``: one gather of the rows, the augmentation and the
    normalisation run once over the whole batch.
    """

    def __init__(
        self,
        X: np.ndarray,
        labels: np.ndarray,
        indices: np.ndarray,
        mean: np.ndarray | None = None,
        std: np.ndarray | None = None,
        augmentation: BatchAugmentation | None = None,
        epoch: int = 0,
    ) -> None:
        self.X = X
        self.labels = labels
        self.indices = np.asarray(indices, dtype=np.int64)
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float32)
        self.std = None if std is None else np.asarray(std, dtype=np.float32)
        self.augmentation = augmentation
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def _keys(self, keys: Sequence) -> tuple[np.ndarray, np.ndarray]:
        positions = np.empty(len(keys), dtype=np.int64)
        epochs = np.full(len(keys), self.epoch, dtype=np.int64)
        for k, key in enumerate(keys):
            if isinstance(key, tuple | list):
                positions[k], epochs[k] = key
            else:
                positions[k] = key
        return positions, epochs

    def batch(self, keys: Sequence) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x, y, index)`` stacked over ``keys`` (positions or ``(position, epoch)``)."""
        positions, epochs = self._keys(keys)
        rows = self.indices[positions]
        x = np.asarray(self.X[rows], dtype=np.float32)
        if self.augmentation is not None:  # on raw values, before normalisation
            x = self.augmentation(x, rows, epochs)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        y = torch.from_numpy(np.asarray(self.labels[rows], dtype=np.int64))
        return torch.from_numpy(np.ascontiguousarray(x)), y, torch.from_numpy(rows)

    def __getitems__(self, keys: Sequence) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        x, y, index = self.batch(keys)
        return list(zip(x, y, index, strict=True))

    def __getitem__(self, key) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y, index = self.batch([key])
        return x[0], y[0], index[0]


class EpochShuffleSampler(torch.utils.data.Sampler):
    """Shuffles ``range(n)`` with the permutation of ``seed + epoch``.

    Lightning calls ``set_epoch`` before every epoch, so the order depends only on the
    seed and the epoch number: a run resumed from a checkpoint sees the same batches as
    one that never stopped (a shared ``torch.Generator`` would restart its stream).
    ``with_epoch=True`` yields ``(position, epoch)`` pairs instead of positions, which
    carries the epoch to the dataset's augmentation, also inside worker processes.
    """

    def __init__(self, n: int, seed: int, with_epoch: bool = False) -> None:
        self.n, self.seed, self.epoch = int(n), int(seed), 0
        self.with_epoch = bool(with_epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=generator).tolist()
        if self.with_epoch:
            return iter([(position, self.epoch) for position in order])
        return iter(order)

    def __len__(self) -> int:
        return self.n


def epoch_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    shuffle_seed: int,
    shuffle: bool = False,
    with_epoch: bool = False,
) -> torch.utils.data.DataLoader:
    """The DataModules' loader: in order, or shuffled per epoch by :class:`EpochShuffleSampler`
    (``with_epoch``: the sampler's keys carry the epoch to the dataset's augmentation)."""
    sampler = (
        EpochShuffleSampler(len(dataset), shuffle_seed, with_epoch=with_epoch) if shuffle else None
    )
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
