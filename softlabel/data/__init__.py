"""Offline datasets, on-disk loaders, splits, label noise and the Lightning DataModule.

Every dataset item is ``(x, y, index)``: ``x`` float32, ``y`` int64 scalar, ``index`` the
item's int64 position in the full dataset; text items (``TextDataModule``) are
``(input_ids, labels, index)``. Importing this package does not import Lightning;
``SoftLabelDataModule`` and ``TextDataModule`` are loaded on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from softlabel.data.builtin import digits, mnist1d, mnist_subset, synthetic
from softlabel.data.datasets import IndexedArrayDataset
from softlabel.data.images import cifar10, cifar100, fashion_mnist, mnist, read_idx
from softlabel.data.source import ArraySource
from softlabel.data.tabular import tabular
from softlabel.data.tokenizers import ByteTokenizer

if TYPE_CHECKING:
    from softlabel.data.datamodule import SoftLabelDataModule
    from softlabel.data.text import TextDataModule

__all__ = [
    "ArraySource",
    "ByteTokenizer",
    "IndexedArrayDataset",
    "SoftLabelDataModule",
    "TextDataModule",
    "cifar10",
    "cifar100",
    "digits",
    "fashion_mnist",
    "mnist",
    "mnist1d",
    "mnist_subset",
    "read_idx",
    "synthetic",
    "tabular",
]


def __getattr__(name: str) -> Any:
    if name == "SoftLabelDataModule":
        from softlabel.data.datamodule import SoftLabelDataModule

        return SoftLabelDataModule
    if name == "TextDataModule":
        from softlabel.data.text import TextDataModule

        return TextDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
