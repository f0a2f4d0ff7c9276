"""Synthetic label noise on the training split, with a report of what changed."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

NOISE_KINDS = ("symmetric", "pairwise")


def parse_label_noise(label_noise) -> tuple[str, float] | None:
    """``None`` or a mapping ``{kind: symmetric|pairwise, rate: r}`` -> ``(kind, rate)``."""
    if label_noise is None:
        return None
    if not isinstance(label_noise, Mapping):
        raise TypeError(
            f"label_noise={label_noise!r}; expected None or a mapping {{kind: ..., rate: ...}}"
        )
    unknown = set(label_noise) - {"kind", "rate"}
    if unknown:
        raise ValueError(f"label_noise has unknown keys {sorted(unknown)}; allowed: kind, rate")
    kind = label_noise.get("kind", "symmetric")
    rate = float(label_noise.get("rate", 0.0))
    if kind not in NOISE_KINDS:
        raise ValueError(f"label_noise.kind={kind!r}; allowed: {NOISE_KINDS}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"label_noise.rate={rate}; allowed: 0 <= rate <= 1")
    return kind, rate


def flip_labels(
    labels: np.ndarray, num_classes: int, kind: str, rate: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Flip exactly ``round(rate * n)`` labels chosen uniformly without replacement.

    ``symmetric``: a flipped label moves to a uniformly chosen *other* class,
    ``y' = (y + u) mod K`` with ``u ~ U{1, ..., K-1}``. ``pairwise``: ``y' = (y + 1) mod K``.
    Returns ``(noisy_labels, flipped_positions)`` (positions into ``labels``, sorted).
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED]))
    count = round(rate * len(labels))
    positions = np.sort(rng.choice(len(labels), size=count, replace=False))
    noisy = labels.copy()
    if kind == "symmetric":
        shift = rng.integers(1, num_classes, size=count)
    elif kind == "pairwise":
        shift = np.ones(count, dtype=np.int64)
    else:
        raise ValueError(f"kind={kind!r}; allowed: {NOISE_KINDS}")
    noisy[positions] = (labels[positions] + shift) % num_classes
    return noisy, positions
