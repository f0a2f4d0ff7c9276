"""Seeded batch augmentation of images and 1-D signals: random translation (``shift``) and
the CIFAR crop + flip (``crop_flip``).

Augmentation works on raw values, before normalisation, so vacated pixels are filled with
0 (the background of pixels in [0, 1]). The random draws of a sample depend only on
``(seed, epoch, dataset index)`` (a counter-based hash, no generator state), so a batch is
the same whatever the worker count, the batch composition or a resume from a checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

AUGMENT_MODES = ("none", "shift", "crop_flip")
#: zero padding of ``crop_flip`` (the usual CIFAR recipe: pad 4, crop back, flip).
CROP_PADDING = 4

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
# stream numbers: one independent draw per (sample, stream)
_STREAM_ROW, _STREAM_COL, _STREAM_FLIP = 1, 2, 3


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser over a uint64 array (wrapping arithmetic)."""
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def sample_keys(seed: int, epochs: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """One uint64 key per sample from ``(seed, epoch, dataset index)``."""
    with np.errstate(over="ignore"):
        seed_key = _splitmix64(np.array([int(seed) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
        epochs = np.asarray(epochs, dtype=np.int64).astype(np.uint64)
        indices = np.asarray(indices, dtype=np.int64).astype(np.uint64)
        return _splitmix64(_splitmix64(seed_key ^ epochs) ^ indices)


def uniform_integers(keys: np.ndarray, stream: int, low: int, high: int) -> np.ndarray:
    """Integers in ``low..high`` (inclusive), one per key, from stream ``stream``."""
    with np.errstate(over="ignore"):
        bits = _splitmix64(keys + np.uint64(stream) * _GOLDEN)
    span = np.uint64(high - low + 1)
    return (bits % span).astype(np.int64) + low


def shift_batch(
    x: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    flip: np.ndarray | None = None,
    fill: float = 0.0,
) -> np.ndarray:
    """Translate each image of ``x`` (``(B, C, H, W)``) by ``rows[b]`` pixels down and
    ``cols[b]`` pixels right, then mirror it left-right where ``flip[b]``; vacated pixels
    get ``fill``.

    ``out[b, c, i, j] = x[b, c, i - rows[b], j' - cols[b]]`` with ``j' = W - 1 - j`` if
    flipped, else ``j``, where that pixel exists. One gather over the flattened batch
    (``take_along_axis``), no loop over samples or pixels. Numpy rather than torch: it runs
    on one thread, so in the training process (``num_workers=0``) it does not compete with
    the model's intra-op threads.
    """
    batch, channels, height, width = x.shape
    rows = np.asarray(rows, dtype=np.int64)[:, None]
    target_cols = np.broadcast_to(np.arange(width), (batch, width))
    if flip is not None:
        target_cols = np.where(
            np.asarray(flip, dtype=bool)[:, None], width - 1 - target_cols, target_cols
        )
    source_rows = np.arange(height) - rows
    source_cols = target_cols - np.asarray(cols, dtype=np.int64)[:, None]
    inside = ((source_rows >= 0) & (source_rows < height))[:, :, None] & (
        (source_cols >= 0) & (source_cols < width)
    )[:, None, :]
    flat_source = (
        source_rows.clip(0, height - 1)[:, :, None] * width
        + source_cols.clip(0, width - 1)[:, None, :]
    ).reshape(batch, 1, height * width)
    moved = np.take_along_axis(x.reshape(batch, channels, height * width), flat_source, axis=2)
    moved = moved.reshape(batch, channels, height, width)
    return np.where(inside[:, None], moved, np.asarray(fill, dtype=x.dtype))


def check_image_shape(image_shape: Sequence[int] | None, name: str) -> tuple[int, ...]:
    """``image_shape`` as a tuple, or a ValueError saying how to declare it."""
    if image_shape is None:
        raise ValueError(
            f"{name} has no image shape (a flat feature vector of unknown layout), so it "
            "cannot be translated; declare it with data.image_shape=[C,H,W] (e.g. [1,28,28]) "
            "or ArraySource(image_shape=...), or use data.augment=none"
        )
    return tuple(int(d) for d in image_shape)


class BatchAugmentation:
    """Seeded augmentation of raw numpy batches shaped ``(B, *input_shape)``.

    ``mode="shift"``: a translation by ``(dy, dx)``, each uniform in ``-max_shift..max_shift``
    (``dx`` only for 1-D signals ``(C, L)``), zero fill. ``mode="crop_flip"``: a random
    ``H x W`` crop of the image zero-padded by :data:`CROP_PADDING` pixels (a translation by
    up to 4), then a horizontal flip with probability 1/2. Flat inputs are reshaped to
    ``image_shape`` and back.
    """

    def __init__(
        self,
        mode: str,
        input_shape: Sequence[int],
        image_shape: Sequence[int],
        max_shift: int = 2,
        seed: int = 0,
    ) -> None:
        if mode not in AUGMENT_MODES[1:]:
            raise ValueError(f"augmentation mode={mode!r}; allowed: {AUGMENT_MODES[1:]}")
        self.mode, self.seed, self.max_shift = mode, int(seed), int(max_shift)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.image_shape = tuple(int(d) for d in image_shape)
        if math.prod(self.image_shape) != math.prod(self.input_shape):
            raise ValueError(
                f"image_shape={self.image_shape} does not hold input_shape={self.input_shape}"
            )
        if len(self.image_shape) not in (2, 3):
            raise ValueError(
                f"image_shape={self.image_shape}; augmentation needs (C, H, W) or (C, L)"
            )
        if mode == "crop_flip" and len(self.image_shape) != 3:
            raise ValueError(f"crop_flip needs 2-D images (C, H, W), not {self.image_shape}")
        side = min(self.image_shape[1:])
        if mode == "shift" and not 0 <= self.max_shift < side:
            raise ValueError(
                f"max_shift={self.max_shift}; allowed: 0 <= max_shift < {side} "
                f"(the smallest side of {self.image_shape})"
            )
        self.reach = CROP_PADDING if mode == "crop_flip" else self.max_shift

    @property
    def is_random(self) -> bool:
        return self.reach > 0 or self.mode == "crop_flip"

    def offsets(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-sample ``(rows, cols)`` translations for these keys."""
        reach = self.reach
        cols = uniform_integers(keys, _STREAM_COL, -reach, reach)
        if len(self.image_shape) == 2:
            return np.zeros_like(cols), cols
        return uniform_integers(keys, _STREAM_ROW, -reach, reach), cols

    def __call__(self, x: np.ndarray, indices: np.ndarray, epochs: np.ndarray) -> np.ndarray:
        """Augment raw ``x`` (``(B, *input_shape)``) of samples ``indices`` at ``epochs``."""
        if not self.is_random or len(x) == 0:
            return x
        keys = sample_keys(self.seed, epochs, indices)
        rows, cols = self.offsets(keys)
        batch = len(x)
        if len(self.image_shape) == 2:
            images = x.reshape(batch, self.image_shape[0], 1, self.image_shape[1])
        else:
            images = x.reshape(batch, *self.image_shape)
        flip = None
        if self.mode == "crop_flip":
            flip = uniform_integers(keys, _STREAM_FLIP, 0, 1).astype(bool)
        return shift_batch(images, rows, cols, flip).reshape(batch, *self.input_shape)
