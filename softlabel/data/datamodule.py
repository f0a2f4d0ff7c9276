"""`SoftLabelDataModule`: splits, label noise, normalisation and loaders over an
`ArraySource`; every item is ``(x, y, index)``."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from softlabel.data.datasets import EpochShuffleSampler, IndexedArrayDataset, feature_statistics
from softlabel.data.noise import flip_labels, parse_label_noise
from softlabel.data.source import ArraySource
from softlabel.data.splits import Split, make_split, subset_pool

PREDICT_SPLITS = ("all", "train", "val", "test")


def resolve_source(source: Any) -> ArraySource:
    """An `ArraySource`, a callable returning one, or a ``{_target_: ...}`` config."""
    if isinstance(source, Mapping) and "_target_" in source:
        from hydra.utils import instantiate

        source = instantiate(source)
    if not isinstance(source, ArraySource) and callable(source):
        source = source()
    if not isinstance(source, ArraySource):
        raise TypeError(
            f"source={source!r}; expected an ArraySource, a callable returning one, "
            "or a config with _target_"
        )
    return source


class SoftLabelDataModule(L.LightningDataModule):
    """Train / val / test loaders over one `ArraySource`.

    Splits are deterministic given ``seed`` (stratified where possible); a source with
    ``test_index`` keeps its official test split. ``label_noise`` (``{kind, rate}``) changes
    only the train split. ``normalize`` standardises with train-split statistics.
    ``augment`` (3-channel images only) adds a random crop (pad 4) and horizontal flip to
    the train loader. ``subset`` keeps ``subset`` samples of a seeded permutation.
    The train order is the permutation of ``shuffle_seed + epoch`` (default: ``seed``).
    """

    def __init__(
        self,
        source: ArraySource | Callable[[], ArraySource] | Mapping,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
        label_noise: Mapping | None = None,
        normalize: bool = True,
        augment: bool = False,
        subset: int | None = None,
        shuffle_seed: int | None = None,
    ) -> None:
        super().__init__()
        if int(batch_size) < 1:
            raise ValueError(f"batch_size={batch_size}; allowed: an integer >= 1")
        if int(num_workers) < 0:
            raise ValueError(f"num_workers={num_workers}; allowed: an integer >= 0")
        self._source_spec = source
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.seed = int(seed)
        self.shuffle_seed = self.seed if shuffle_seed is None else int(shuffle_seed)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.label_noise = parse_label_noise(label_noise)
        self.normalize, self.augment, self.subset = bool(normalize), bool(augment), subset
        self._source: ArraySource | None = None
        self._split: Split | None = None

    # ------------------------------------------------------------------ setup
    def prepare_data(self) -> None:
        self._ensure_ready()

    def setup(self, stage: str | None = None) -> None:
        self._ensure_ready()

    def _ensure_ready(self) -> None:
        """Load the source and compute splits, noise and statistics, once."""
        if self._split is not None:
            return
        source = resolve_source(self._source_spec)
        if self.augment and (len(source.input_shape) != 3 or source.input_shape[0] != 3):
            raise ValueError(
                f"augment=True needs 3-channel images (3, H, W); {source.name} has "
                f"input_shape={source.input_shape}"
            )
        pool = subset_pool(len(source), self.subset, self.seed)
        split = make_split(
            source.y, pool, self.val_fraction, self.test_fraction, self.seed, source.test_index
        )
        self._labels = source.y.copy()
        self._flipped = np.empty(0, dtype=np.int64)
        if self.label_noise is not None:
            kind, rate = self.label_noise
            noisy, positions = flip_labels(
                source.y[split.train], source.num_classes, kind, rate, self.seed
            )
            self._labels[split.train] = noisy
            self._flipped = split.train[positions]
        self._mean = self._std = None
        if self.normalize:
            self._mean, self._std = feature_statistics(source.X, split.train)
        self._source, self._split = source, split

    @property
    def source(self) -> ArraySource:
        self._ensure_ready()
        return self._source

    @property
    def split(self) -> Split:
        """Sorted dataset indices of the train, val and test splits."""
        self._ensure_ready()
        return self._split

    # ------------------------------------------------------------- properties
    @property
    def name(self) -> str:
        return self.source.name

    @property
    def task(self) -> str:
        return self.source.task

    @property
    def num_classes(self) -> int:
        """Model outputs: K for multiclass, 1 (one logit) for binary."""
        return 1 if self.task == "binary" else self.source.num_classes

    @property
    def num_labels(self) -> int:
        """Distinct label values (2 for binary)."""
        return self.source.num_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.source.input_shape

    @property
    def num_train(self) -> int:
        return len(self.split.train)

    @property
    def class_counts(self) -> np.ndarray:
        """Label counts over the train split after noise, length ``num_labels``."""
        return np.bincount(self.train_labels, minlength=self.num_labels)

    @property
    def train_labels(self) -> np.ndarray:
        """Labels the model trains on (after noise), aligned with ``split.train``."""
        return self._labels_used[self.split.train]

    @property
    def clean_labels(self) -> np.ndarray:
        """The source's labels over the full dataset (no noise)."""
        return self.source.y

    @property
    def noisy_index(self) -> np.ndarray:
        """Dataset indices whose train label was flipped (sorted)."""
        self._ensure_ready()
        return self._flipped

    @property
    def noise_report(self) -> dict[str, Any]:
        """``{kind, rate, num_flipped, fraction_flipped, num_train}``."""
        kind, rate = self.label_noise if self.label_noise else ("none", 0.0)
        flipped = len(self.noisy_index)
        return {
            "kind": kind,
            "rate": rate,
            "num_flipped": flipped,
            "fraction_flipped": flipped / self.num_train,
            "num_train": self.num_train,
        }

    @property
    def has_random_augmentation(self) -> bool:
        return self.augment

    @property
    def fingerprint(self) -> str:
        """The source's fingerprint (data only)."""
        return self.source.fingerprint

    @property
    def split_fingerprint(self) -> str:
        """Hex sha256 over the source fingerprint and the three index arrays."""
        digest = hashlib.sha256(self.fingerprint.encode())
        for indices in (self.split.train, self.split.val, self.split.test):
            digest.update(np.ascontiguousarray(indices, dtype=np.int64).tobytes())
            digest.update(b"|")
        return digest.hexdigest()

    @property
    def _labels_used(self) -> np.ndarray:
        self._ensure_ready()
        return self._labels

    # ---------------------------------------------------------------- datasets
    def _dataset(self, indices: np.ndarray, labels: np.ndarray, augment: bool = False):
        self._ensure_ready()
        return IndexedArrayDataset(
            self._source.X, labels, indices, self._mean, self._std, augment=augment
        )

    def full_dataset(self) -> IndexedArrayDataset:
        """All samples of the source (every index, clean labels, no augmentation)."""
        return self._dataset(np.arange(len(self.source)), self.source.y)

    def split_dataset(self, split: str) -> IndexedArrayDataset:
        """``"train"`` (noisy labels, augmented if enabled), ``"val"``, ``"test"``, ``"all"``."""
        if split == "all":
            return self.full_dataset()
        if split not in PREDICT_SPLITS:
            raise ValueError(f"split={split!r}; allowed: {PREDICT_SPLITS}")
        return self._dataset(getattr(self.split, split), self._labels_used)

    def _loader(self, dataset, shuffle: bool = False) -> DataLoader:
        sampler = EpochShuffleSampler(len(dataset), self.shuffle_seed) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self._dataset(self.split.train, self._labels_used, augment=self.augment)
        return self._loader(dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.split_dataset("val"))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.split_dataset("test"))

    def predict_dataloader(self, split: str = "all") -> DataLoader:
        """Unshuffled, unaugmented loader over ``split`` (``"all"``: every index, clean
        labels), e.g. to cache teacher logits by index."""
        return self._loader(self.split_dataset(split))
