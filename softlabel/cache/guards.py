"""Checks made before a cache is used for training, and what identifies its inputs."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from softlabel.cache.format import read_manifest
from softlabel.cache.reader import TeacherCache


def inputs_fingerprint(datamodule: Any) -> str:
    """Hex sha256 of what the teacher's inputs depend on: the data and its preprocessing.

    ``sha256(fingerprint | normalization | min_std | split_fingerprint)``; the split enters
    only when the data module normalises, because the statistics come from the train split.
    A cache written under one normalisation (per channel, per feature, none) or floor on
    the standard deviation is refused under another.
    """
    mode = getattr(datamodule, "normalization", None)
    if mode is None:  # data modules without the property: normalised or not
        mode = "feature" if bool(getattr(datamodule, "normalize", False)) else "none"
    parts = [str(datamodule.fingerprint), f"normalization={mode}"]
    if mode != "none":
        parts.append(f"min_std={float(getattr(datamodule, 'min_std', 0.0))!r}")
        parts.append(str(datamodule.split_fingerprint))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def check_augmentation(has_random_augmentation: bool, *, allow_augmentation: bool) -> None:
    """Refuse a cache with random data augmentation unless the user opted in.

    Cached logits were computed on the un-augmented inputs, so they do not match what the
    student sees under random augmentation.
    """
    if has_random_augmentation and not allow_augmentation:
        raise ValueError(
            "the data config applies random augmentation, but a teacher cache holds logits of "
            "the un-augmented inputs; use a live teacher, disable the augmentation, or opt in "
            "with teacher.allow_augmentation=true"
        )


def open_for_datamodule(
    path: str | os.PathLike[str],
    datamodule: Any,
    *,
    teacher_sha256: str | None = None,
    allow_augmentation: bool = False,
    verify: str = "lazy",
    tail: str = "bucket",
) -> TeacherCache:
    """Open the cache at ``path`` for training on ``datamodule``.

    Checks the data's ``fingerprint``, ``num_classes`` and :func:`inputs_fingerprint` (and
    ``teacher_sha256`` when given) against the manifest, and refuses random augmentation
    unless ``allow_augmentation``. ``verify`` and ``tail`` (what a top-k lookup returns:
    ``"bucket"`` or ``"uniform"``) are passed on to :meth:`TeacherCache.open`. A cache of a
    teacher with another tokenizer (its manifest's ``alignment``) holds that teacher's
    vocabulary, and must have been written for the data's tokenizer.
    """
    check_augmentation(
        bool(getattr(datamodule, "has_random_augmentation", False)),
        allow_augmentation=allow_augmentation,
    )
    alignment = read_manifest(Path(path)).alignment
    if alignment is not None:
        check_student_tokenizer(path, alignment, datamodule)
    return TeacherCache.open(
        path,
        fingerprint=datamodule.fingerprint,
        num_classes=datamodule.num_classes if alignment is None else None,
        teacher_sha256=teacher_sha256,
        inputs_fingerprint=inputs_fingerprint(datamodule),
        verify=verify,
        tail=tail,
    )


def check_student_tokenizer(path: Any, alignment: dict[str, Any], datamodule: Any) -> None:
    """A cache of a teacher with another tokenizer holds rows at the positions of the student
    tokenizer it was written for: refuse it for data with another tokenizer, naming both."""
    have = getattr(datamodule, "tokenizer_fingerprint", None)
    if have is not None and have != alignment["student_tokenizer"]:
        raise ValueError(
            f"teacher.cache={str(path)!r} holds a teacher of another tokenizer aligned to the "
            f"positions of data.tokenizer={alignment['data.tokenizer']!r} (fingerprint "
            f"{alignment['student_tokenizer'][:12]}), but this run's data.tokenizer has "
            f"fingerprint {have[:12]}: write the cache again with softlabel-cache and this "
            "run's data.tokenizer"
        )
