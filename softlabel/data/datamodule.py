"""`SoftLabelDataModule`: splits, label noise, normalisation and loaders over an
`ArraySource`; every item is ``(x, y, index)``."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from softlabel.data.augment import BatchAugmentation, check_image_shape
from softlabel.data.datasets import (
    MIN_STD,
    IndexedArrayDataset,
    epoch_loader,
    feature_statistics,
)
from softlabel.data.noise import flip_labels, parse_label_noise
from softlabel.data.source import ArraySource
from softlabel.data.splits import Split, make_split, subset_pool

PREDICT_SPLITS = ("all", "train", "val", "test")
#: ``data.normalize`` values; ``true``/``auto``: ``channel`` for images and signals (the
#: source has an ``image_shape``), ``feature`` for feature vectors; ``image`` = ``channel``.
NORMALIZE_CHOICES = ("auto", "channel", "image", "feature", "none")
#: ``data.augment`` values; ``true``/``auto``: ``crop_flip`` for 3-channel images,
#: ``shift`` for other images and signals (an error for feature vectors).
AUGMENT_CHOICES = ("auto", "shift", "crop_flip", "none")


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    """``true`` -> ``"auto"``, ``false``/``None`` -> ``"none"``, else one of ``choices``."""
    if value is None or value is False:
        return "none"
    if value is True:
        return "auto"
    if isinstance(value, str) and value.lower() in choices:
        return value.lower()
    raise ValueError(f"{key}={value!r}; allowed: true, false, {', '.join(choices)}")


def resolve_normalization(normalize: Any, image_shape: tuple[int, ...] | None) -> str:
    """The normalisation in force: ``"channel"``, ``"feature"`` or ``"none"``."""
    mode = _choice("normalize", normalize, NORMALIZE_CHOICES)
    if mode == "auto":
        return "feature" if image_shape is None else "channel"
    return "channel" if mode == "image" else mode


def resolve_augmentation(augment: Any, image_shape: tuple[int, ...] | None, name: str) -> str:
    """The augmentation in force: ``"shift"``, ``"crop_flip"`` or ``"none"``."""
    mode = _choice("augment", augment, AUGMENT_CHOICES)
    if mode == "none":
        return mode
    image_shape = check_image_shape(image_shape, f"augment={augment!r}: {name}")
    if mode == "auto":
        return "crop_flip" if len(image_shape) == 3 and image_shape[0] == 3 else "shift"
    return mode


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
    only the train split. ``subset`` keeps ``subset`` samples of a seeded permutation.
    The train order is the permutation of ``shuffle_seed + epoch`` (default: ``seed``).

    ``normalize`` standardises with train-split statistics: ``"channel"`` (one mean / std
    per channel of the image shape), ``"feature"`` (per feature), ``"none"``; ``True``
    picks ``channel`` for images and signals, ``feature`` for feature vectors. Standard
    deviations below ``min_std`` are raised to it; exactly constant ones become 1.

    ``augment`` changes the train loader only, on raw values before normalisation, seeded
    by ``(shuffle_seed, epoch, index)``: ``"shift"`` translates by up to ``max_shift``
    pixels (zero fill), ``"crop_flip"`` crops the image padded by 4 and flips it
    horizontally half of the time; ``True`` picks ``crop_flip`` for 3-channel images and
    ``shift`` otherwise. ``image_shape`` (``(C, H, W)`` or ``(C, L)``) overrides the
    source's, e.g. for a table of pixels.
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
        normalize: bool | str = True,
        augment: bool | str = False,
        subset: int | None = None,
        shuffle_seed: int | None = None,
        max_shift: int = 2,
        min_std: float = MIN_STD,
        image_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if int(batch_size) < 1:
            raise ValueError(f"batch_size={batch_size}; allowed: an integer >= 1")
        if int(num_workers) < 0:
            raise ValueError(f"num_workers={num_workers}; allowed: an integer >= 0")
        if isinstance(max_shift, bool) or int(max_shift) != max_shift or int(max_shift) < 0:
            raise ValueError(f"max_shift={max_shift}; allowed: an integer >= 0")
        if not float(min_std) >= 0:
            raise ValueError(f"min_std={min_std}; allowed: a number >= 0")
        self._source_spec = source
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.seed = int(seed)
        self.shuffle_seed = self.seed if shuffle_seed is None else int(shuffle_seed)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.label_noise = parse_label_noise(label_noise)
        # the requests; what they resolve to for the source: `normalization`, `augmentation`
        self.normalize_mode = _choice("normalize", normalize, NORMALIZE_CHOICES)
        self.augment = _choice("augment", augment, AUGMENT_CHOICES)
        #: whether inputs are standardised at all (what a teacher cache records)
        self.normalize = self.normalize_mode != "none"
        self.max_shift, self.min_std, self.subset = int(max_shift), float(min_std), subset
        self._image_shape_request = (
            None if image_shape is None else tuple(int(d) for d in image_shape)
        )
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
        image_shape = self._image_shape_request or source.image_shape
        if self._image_shape_request is not None and (
            len(image_shape) not in (2, 3)
            or math.prod(image_shape) != math.prod(source.input_shape)
        ):
            raise ValueError(
                f"image_shape={list(image_shape)}; expected [C, H, W] or [C, L] holding "
                f"{source.name}'s input_shape={source.input_shape}"
            )
        self._normalization = resolve_normalization(self.normalize_mode, image_shape)
        self._augmentation = resolve_augmentation(self.augment, image_shape, source.name)
        self._augmenter = None
        if self._augmentation != "none":
            self._augmenter = BatchAugmentation(
                self._augmentation,
                source.input_shape,
                image_shape,
                max_shift=self.max_shift,
                seed=self.shuffle_seed,
            )
        self._image_shape = image_shape
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
        if self._normalization != "none":
            self._mean, self._std = feature_statistics(
                source.X,
                split.train,
                self._normalization,
                channels=None if image_shape is None else image_shape[0],
                min_std=self.min_std,
            )
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
    def image_shape(self) -> tuple[int, ...] | None:
        """``(C, H, W)`` or ``(C, L)`` of one sample (``data.image_shape`` or the source's);
        ``None`` for feature vectors."""
        self._ensure_ready()
        return self._image_shape

    @property
    def normalization(self) -> str:
        """The normalisation in force: ``"channel"``, ``"feature"`` or ``"none"``."""
        self._ensure_ready()
        return self._normalization

    @property
    def statistics(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(mean, std)`` shaped like one sample, or ``None`` without normalisation."""
        self._ensure_ready()
        return None if self._mean is None else (self._mean, self._std)

    @property
    def augmentation(self) -> str:
        """The train augmentation in force: ``"shift"``, ``"crop_flip"`` or ``"none"``."""
        self._ensure_ready()
        return self._augmentation

    @property
    def has_random_augmentation(self) -> bool:
        """Whether train inputs change at random (``shift`` with ``max_shift=0`` does not)."""
        if self.augment == "none":
            return False
        self._ensure_ready()
        return self._augmenter is not None and self._augmenter.is_random

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
        augmentation = self._augmenter if augment and self.has_random_augmentation else None
        return IndexedArrayDataset(
            self._source.X, labels, indices, self._mean, self._std, augmentation=augmentation
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
        # an augmented dataset needs the epoch with each key (workers hold copies)
        return epoch_loader(
            dataset,
            self.batch_size,
            self.num_workers,
            self.shuffle_seed,
            shuffle=shuffle,
            with_epoch=dataset.augmentation is not None,
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self._dataset(self.split.train, self._labels_used, augment=True)
        return self._loader(dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.split_dataset("val"))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.split_dataset("test"))

    def predict_dataloader(self, split: str = "all") -> DataLoader:
        """Unshuffled, unaugmented loader over ``split`` (``"all"``: every index, clean
        labels), e.g. to cache teacher logits by index."""
        return self._loader(self.split_dataset(split))
