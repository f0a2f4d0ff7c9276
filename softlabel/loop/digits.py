"""A multiclass stream: an offline image dataset (digits or the MNIST subset) cut into chunks.

A random ``holdout_fraction`` of the samples is the fixed held-out set; the rest is split
into ``num_chunks`` chunks with an optional shift between chunks (chunk ``t = 1..T``):

* ``shift="none"``: a uniform random split;
* ``shift="prior"``: a rotating class prior; a sample of class ``c`` goes to chunk ``t``
  with probability ``proportional to exp(strength * cos(2 pi (c / K - (t - 1) / T)))``, so each
  chunk over-represents different classes;
* ``shift="noise"``: a uniform split, then Gaussian noise of standard deviation
  ``strength * (t - 1) / (T - 1)`` added to chunk ``t``'s inputs (growing input noise);
  the held-out set stays clean.

Sample ids are the samples' positions in the full dataset.
"""

from __future__ import annotations

import numpy as np

from softlabel.loop.stream import Chunk, Stream

__all__ = ["SHIFTS", "digits_stream"]

SHIFTS = ("none", "prior", "noise")
DATASETS = ("digits", "mnist_subset")


def _chunk_assignment(
    y: np.ndarray,
    num_classes: int,
    num_chunks: int,
    shift: str,
    strength: float,
    rng: np.random.Generator,
) -> np.ndarray:
    if shift != "prior":
        return rng.permutation(len(y)) % num_chunks
    phase = y[:, None] / num_classes - np.arange(num_chunks)[None, :] / num_chunks
    weights = np.exp(strength * np.cos(2 * np.pi * phase))
    cumulative = np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)
    draws = rng.random(len(y))[:, None]
    return np.minimum((draws > cumulative).sum(axis=1), num_chunks - 1)


def digits_stream(
    *,
    num_chunks: int = 6,
    dataset: str = "digits",
    holdout_fraction: float = 0.2,
    shift: str = "prior",
    strength: float = 1.0,
    seed: int = 0,
) -> Stream:
    """A :class:`Stream` of ``num_chunks`` chunks of ``dataset`` with the given ``shift``."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if shift not in SHIFTS:
        raise ValueError(f"shift must be one of {SHIFTS}, got {shift!r}")
    if not isinstance(num_chunks, int) or num_chunks < 2:
        raise ValueError(f"num_chunks must be an int >= 2, got {num_chunks!r}")
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction!r}")
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength!r}")
    from softlabel import data

    source = getattr(data, dataset)(flat=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(source))
    n_holdout = int(round(holdout_fraction * len(order)))
    holdout, rest = np.sort(order[:n_holdout]), np.sort(order[n_holdout:])
    assignment = _chunk_assignment(
        source.y[rest], source.num_classes, num_chunks, shift, strength, rng
    )
    chunks = []
    for t in range(num_chunks):
        ids = rest[assignment == t]
        x = source.X[ids].copy()
        if shift == "noise" and t > 0:
            sigma = strength * t / (num_chunks - 1)
            x += rng.normal(0.0, sigma, size=x.shape).astype(np.float32)
        chunks.append(Chunk(name=f"chunk {t + 1}", x=x, y=source.y[ids], ids=ids.astype(np.int64)))
    return Stream(
        name=dataset,
        task="multiclass",
        num_classes=source.num_classes,
        chunks=chunks,
        holdout=Chunk(
            name="holdout", x=source.X[holdout], y=source.y[holdout], ids=holdout.astype(np.int64)
        ),
        description=f"{dataset} in {num_chunks} chunks, shift={shift} (strength {strength})",
    )
