"""The reference providers that the ``teacher`` and ``previous`` configs name by ``_target_``.

:func:`softlabel.modules.build.build_reference_provider` calls the node's ``_target_``
with the node's other keys (missing values as None) and ``datamodule``, ``student`` (the
built student model, or None when there is none, e.g. in ``softlabel-cache``) and
``student_config``. Each returns ``(provider, record)``: the provider and what
``metrics.json`` records about it (paths and SHA-256). A config of your own may name any
callable that takes those arguments and returns a :class:`ReferenceProvider` (or such a
pair). ``teacher=none`` has no ``_target_``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from softlabel.modules.build import absolute_path, is_causal_lm
from softlabel.modules.cross_tokenizer import (
    AlignedCache,
    aligned_teacher,
    check_own_tokenizer,
    has_other_vocabulary,
)
from softlabel.modules.frozen import frozen_model, output_rows
from softlabel.modules.references import CachedTeacher, LiveTeacher, PreviousModelProvider

__all__ = ["cached_teacher", "live_teacher", "previous_model"]

Record = dict[str, Any]


def _check_vocabularies(
    student: nn.Module | None, reference: nn.Module | int, datamodule: Any
) -> None:
    """A causal LM's reference (a model, or its number of output rows) must cover the
    student's vocabulary (``softlabel.models.hf.check_vocabularies``); nothing to check
    without a student."""
    if student is None or not is_causal_lm(datamodule):
        return
    from softlabel.models.hf import check_vocabularies

    rows = reference if isinstance(reference, int) else output_rows(reference)
    check_vocabularies(output_rows(student), rows, int(datamodule.vocab_size))


def live_teacher(
    model: Mapping[str, Any] | None = None,
    checkpoint: str | None = None,
    pretrained: str | None = None,
    dtype: str | None = None,
    trust_checkpoint: bool = False,
    tokenizer: str | None = None,
    *,
    datamodule: Any,
    student: nn.Module | None = None,
    student_config: Mapping[str, Any] | None = None,
) -> tuple[LiveTeacher, Record]:
    """A frozen teacher model run on every batch (``teacher=<architecture>``,
    ``teacher=hf_causal_lm``): ``model`` with the weights of ``checkpoint``, or a causal LM
    from ``pretrained`` (see :func:`softlabel.modules.frozen.frozen_model`). ``tokenizer``
    (causal LMs; null: the data's): the teacher's own tokenizer, a directory, a ``.gguf``
    file or ``null`` for byte-level; when it is not the data's, the teacher reads its own
    tokens of every block (:mod:`softlabel.modules.cross_tokenizer`)."""
    if tokenizer is not None and not is_causal_lm(datamodule):
        raise ValueError(
            f"teacher.tokenizer={tokenizer!r} is for causal LMs (data=text); leave it null"
        )
    if tokenizer is None and pretrained is not None and is_causal_lm(datamodule):
        check_own_tokenizer(str(pretrained), datamodule)  # before the model loads
    teacher, record = frozen_model(
        "teacher",
        datamodule,
        model=model,
        checkpoint=checkpoint,
        pretrained=pretrained,
        dtype=dtype,
        trust_checkpoint=trust_checkpoint,
    )
    if tokenizer is not None:
        provider, aligned = aligned_teacher(teacher, str(tokenizer), datamodule)
        if not has_other_vocabulary(provider):
            _check_vocabularies(student, teacher, datamodule)
        return provider, {**record, **aligned}  # type: ignore[return-value]
    _check_vocabularies(student, teacher, datamodule)
    return LiveTeacher(teacher), record


def cached_teacher(
    cache: str | None = None,
    allow_augmentation: bool = False,
    verify: str = "lazy",
    tail: str = "bucket",
    *,
    datamodule: Any,
    student: nn.Module | None = None,
    student_config: Mapping[str, Any] | None = None,
) -> tuple[CachedTeacher, Record]:
    """Teacher logits read by dataset index from a ``softlabel-cache`` directory
    (``teacher=cached``), refused unless its manifest matches the data."""
    from softlabel.cache import open_for_datamodule

    if cache is None:
        raise ValueError(
            "teacher.cache is not set: give teacher.cache=DIR (written by softlabel-cache)"
        )
    cache_dir = absolute_path(cache)
    opened = open_for_datamodule(
        cache_dir,
        datamodule,
        allow_augmentation=bool(allow_augmentation),
        verify=verify,
        tail=tail,
    )
    record = {"teacher_cache": cache_dir, "teacher_sha256": opened.teacher_sha256}
    if opened.alignment is not None:  # a teacher with another tokenizer
        counts = {k: opened.alignment[k] for k in ("scored", "aligned")}
        share = counts["aligned"] / max(counts["scored"], 1)
        record["teacher_alignment"] = {**counts, "share": round(share, 6)}
        return AlignedCache(opened), record
    _check_vocabularies(student, int(opened.num_classes), datamodule)
    return CachedTeacher(opened), record


def previous_model(
    model: Mapping[str, Any] | None = None,
    checkpoint: str | None = None,
    pretrained: str | None = None,
    dtype: str | None = None,
    trust_checkpoint: bool = False,
    *,
    datamodule: Any,
    student: nn.Module | None = None,
    student_config: Mapping[str, Any] | None = None,
) -> tuple[PreviousModelProvider, Record]:
    """The previous version's probabilities (``target=reloop``): ``model`` (null: the
    architecture saved with a causal LM's checkpoint, else the student's) with the weights
    of ``checkpoint``."""
    previous, record = frozen_model(
        "previous",
        datamodule,
        model=model,
        checkpoint=checkpoint,
        pretrained=pretrained,
        dtype=dtype,
        trust_checkpoint=trust_checkpoint,
        fallback_model=student_config,
    )
    if not is_causal_lm(datamodule):
        return PreviousModelProvider(previous, datamodule.task), record
    rows = output_rows(previous)
    if student is not None and rows != output_rows(student):
        raise ValueError(
            f"vocabulary mismatch: the previous model has {rows} output rows and the "
            f"student {output_rows(student)}; ReLoop compares the same model's versions"
        )
    return PreviousModelProvider(previous, "multiclass"), record
