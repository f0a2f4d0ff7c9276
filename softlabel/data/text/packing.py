"""Tokens packed into blocks of ``block_size`` (each document followed by the end-of-document
id, the last block right-padded), and the dataset of those blocks.

Every item is ``(input_ids, labels, index)``: ``labels`` equals ``input_ids`` with -100
where the block is padded, not shifted; the causal shift happens once, in the loss
(``logits[:, :-1]`` against ``labels[:, 1:]``, as in transformers' ``ForCausalLMLoss``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["IGNORE_INDEX", "PackedBlocks", "pack_documents"]

#: label of a padded position (``torch.nn.CrossEntropyLoss``'s default ``ignore_index``)
IGNORE_INDEX = -100


def pack_documents(
    tokens: np.ndarray, counts: np.ndarray, block_size: int, eos_id: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(blocks, lengths)``: the documents' tokens, each followed by ``eos_id``, cut into
    rows of ``block_size``; the last row is right-padded with ``pad_id``. ``lengths[b]`` is
    the number of real tokens of block ``b`` (``block_size`` except perhaps the last)."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum()) + len(counts)
    num_blocks = math.ceil(total / block_size)
    flat = np.full(num_blocks * block_size, pad_id, dtype=tokens.dtype)
    ends = np.cumsum(counts + 1) - 1  # the end-of-document positions
    is_text = np.ones(total, dtype=bool)
    is_text[ends] = False
    flat[:total][is_text] = tokens
    flat[ends] = eos_id
    lengths = np.full(num_blocks, block_size, dtype=np.int64)
    if num_blocks:
        lengths[-1] = total - (num_blocks - 1) * block_size
    return flat.reshape(num_blocks, block_size), lengths


class PackedBlocks(Dataset):
    """Rows ``start .. stop - 1`` of the packed blocks; item ``i`` is
    ``(input_ids, labels, index)`` with ``index = start + i`` (its position in the full
    dataset), ``labels = input_ids`` with ``IGNORE_INDEX`` on padding, all int64. The
    DataLoader fetches a batch with one gather (``__getitems__``)."""

    def __init__(self, blocks: np.ndarray, lengths: np.ndarray, start: int, stop: int) -> None:
        self.blocks, self.lengths = blocks, lengths
        self.start, self.stop = int(start), int(stop)

    def __len__(self) -> int:
        return self.stop - self.start

    def batch(self, keys: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(input_ids, labels, index)`` stacked over positions ``keys``."""
        positions = np.asarray(keys, dtype=np.int64).reshape(-1)
        if len(positions) and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f"positions {keys!r} out of range 0..{len(self) - 1}")
        rows = positions + self.start
        ids = self.blocks[rows].astype(np.int64)
        labels = ids.copy()
        labels[np.arange(ids.shape[1])[None, :] >= self.lengths[rows][:, None]] = IGNORE_INDEX
        return torch.from_numpy(ids), torch.from_numpy(labels), torch.from_numpy(rows)

    def __getitems__(self, keys: Sequence[int]) -> list[tuple[torch.Tensor, ...]]:
        return list(zip(*self.batch(keys), strict=True))

    def __getitem__(self, key: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids, labels, index = self.batch([key])
        return ids[0], labels[0], index[0]
