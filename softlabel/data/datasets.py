"""A torch ``Dataset`` over some rows of an array, yielding ``(x, y, index)``."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


def feature_statistics(
    X: np.ndarray, rows: np.ndarray, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation over ``X[rows]``: per feature for vectors ``(D,)``,
    per channel for ``(C, H, W)`` or ``(C, L)`` inputs; shapes broadcast against one
    sample. Two passes in float64 over chunks of rows (no full copy of ``X``). A zero
    standard deviation is replaced by 1 (the feature is only centred)."""
    axes = (0,) if X.ndim == 2 else (0, *range(2, X.ndim))
    blocks = [rows[start : start + chunk] for start in range(0, len(rows), chunk)]
    per_row = X[0].size if X.ndim == 2 else int(np.prod(X.shape[2:]))
    count = len(rows) * (1 if X.ndim == 2 else per_row)
    total = sum(X[block].sum(axis=axes, keepdims=True, dtype=np.float64) for block in blocks)
    mean = total / count
    squares = sum(((X[block] - mean) ** 2).sum(axis=axes, keepdims=True) for block in blocks)
    std = np.sqrt(squares / count)
    std[std == 0] = 1.0
    return mean[0].astype(np.float32), std[0].astype(np.float32)


def random_crop_flip(image: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """Random crop of a ``(C, H, W)`` image padded by ``padding`` zeros on each side, then a
    horizontal flip with probability 1/2 (torch's global RNG)."""
    _, height, width = image.shape
    padded = torch.nn.functional.pad(image, (padding, padding, padding, padding))
    top, left = torch.randint(0, 2 * padding + 1, (2,)).tolist()
    crop = padded[:, top : top + height, left : left + width]
    if torch.rand(()) < 0.5:
        crop = crop.flip(-1)
    return crop.contiguous()


class IndexedArrayDataset(Dataset):
    """Rows ``indices`` of ``X`` with labels from ``labels``; item ``i`` is
    ``(x, y, index)`` with ``index = indices[i]`` (the position in the full dataset) and
    ``x = (X[index] - mean) / std`` as float32, optionally augmented."""

    def __init__(
        self,
        X: np.ndarray,
        labels: np.ndarray,
        indices: np.ndarray,
        mean: np.ndarray | None = None,
        std: np.ndarray | None = None,
        augment: bool = False,
    ) -> None:
        self.X = X
        self.labels = labels
        self.indices = np.asarray(indices, dtype=np.int64)
        self.mean, self.std = mean, std
        self.augment = augment

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = int(self.indices[item])
        x = self.X[index]
        if self.mean is not None:
            x = (x - self.mean) / self.std
        x = torch.as_tensor(np.asarray(x, dtype=np.float32))
        if self.augment:
            x = random_crop_flip(x)
        return x, torch.tensor(self.labels[index], dtype=torch.int64), torch.tensor(index)


class EpochShuffleSampler(torch.utils.data.Sampler[int]):
    """Shuffles ``range(n)`` with the permutation of ``seed + epoch``.

    Lightning calls ``set_epoch`` before every epoch, so the order depends only on the
    seed and the epoch number: a run resumed from a checkpoint sees the same batches as
    one that never stopped (a shared ``torch.Generator`` would restart its stream).
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = int(n), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self) -> int:
        return self.n
