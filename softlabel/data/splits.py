"""Deterministic train / val / test splits over dataset indices."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Split:
    """Sorted dataset indices of the three splits (disjoint)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def check_fraction(name: str, value: float) -> float:
    """Return ``value`` as float if ``0 < value < 1``, else raise ValueError naming it."""
    if not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name}={value}; allowed: a fraction strictly between 0 and 1")
    return float(value)


def subset_pool(num_samples: int, subset: int | None, seed: int) -> np.ndarray:
    """All indices, or the first ``subset`` of a permutation seeded by ``seed`` (sorted)."""
    if subset is None:
        return np.arange(num_samples)
    if isinstance(subset, bool) or not 0 < int(subset) <= num_samples:
        raise ValueError(f"subset={subset}; allowed: None or an integer in 1..{num_samples}")
    permutation = np.random.default_rng(seed).permutation(num_samples)
    return np.sort(permutation[: int(subset)])


def _carve(pool: np.ndarray, labels: np.ndarray, size: int, seed: int):
    """Split ``pool`` into (rest, carved) with ``len(carved) == size``, stratified when
    every class can be represented, otherwise uniformly at random."""
    from sklearn.model_selection import train_test_split

    if not 0 < size < len(pool):
        raise ValueError(
            f"a split of {size} samples out of {len(pool)} is empty or takes everything; "
            "change val_fraction / test_fraction or use more samples"
        )
    try:
        rest, carved = train_test_split(
            pool, test_size=size, random_state=seed, stratify=labels[pool]
        )
    except ValueError:  # a class with a single sample, or fewer samples than classes
        rest, carved = train_test_split(pool, test_size=size, random_state=seed)
    return np.sort(rest), np.sort(carved)


def make_split(
    labels: np.ndarray,
    pool: np.ndarray,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    test_index: np.ndarray | None = None,
) -> Split:
    """Split ``pool`` (dataset indices) into train / val / test.

    Without ``test_index``: ``round(test_fraction * n)`` test and ``round(val_fraction * n)``
    validation samples (``n = len(pool)``), stratified by label where possible. With
    ``test_index``: the test split is ``pool ∩ test_index`` and validation takes
    ``round(val_fraction * n_rest)`` of the remaining samples.
    """
    val_fraction = check_fraction("val_fraction", val_fraction)
    if test_index is None:
        test_fraction = check_fraction("test_fraction", test_fraction)
        if val_fraction + test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction = {val_fraction + test_fraction}; must be < 1"
            )
        rest, test = _carve(pool, labels, round(test_fraction * len(pool)), seed)
        val_size = round(val_fraction * len(pool))
    else:
        is_test = np.isin(pool, test_index)
        rest, test = pool[~is_test], pool[is_test]
        if len(test) == 0:
            raise ValueError("the official test split has no sample in the chosen subset")
        val_size = round(val_fraction * len(rest))
    train, val = _carve(rest, labels, val_size, seed)
    return Split(train=train, val=val, test=np.sort(test))
