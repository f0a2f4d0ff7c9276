"""Atomic writing of a teacher cache.

Rows are streamed into ``.npy`` memmaps inside ``<path>.tmp-<random>`` (same parent
directory); :meth:`CacheWriter.commit` flushes and fsyncs them, writes ``manifest.json``
last and moves the directory into place with ``os.replace``. An interrupted write leaves
only the temporary directory, which has no manifest and is refused by the reader.

The manifest records a new random ``cache_id`` and, for every array file, the SHA-256 of
its header and of each block of rows (see :mod:`softlabel.cache.format`).
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch

from softlabel.cache.format import (
    ALIGNED,
    BLOCK_BYTES,
    DENSE_LOGITS,
    MANIFEST_NAME,
    TOPK_INDEX,
    TOPK_LOGPROB,
    TOPK_TAIL,
    Manifest,
    block_rows_for,
    check_row_shape,
    describe_array_file,
    index_dtype_for,
    validate_layout,
)
from softlabel.functional.topk import TopKLogits

CACHE_FILES = frozenset({MANIFEST_NAME, DENSE_LOGITS, TOPK_INDEX, TOPK_LOGPROB, TOPK_TAIL, ALIGNED})


def topk_logprobs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k classes and their log-probabilities at T = 1.

    ``logp = log_softmax(logits)`` over all K classes; returns ``(index, logp[index])``,
    each ``(..., k)``, most probable class first. The tail mass too:
    ``TopKLogits.from_logits(logits, k)``.
    """
    index, logprob, _ = TopKLogits.from_logits(logits.float(), k)
    return index, logprob


class CacheWriter:
    """Streams teacher outputs into a new cache directory and publishes it atomically.

    Use as a context manager: leaving the block by an exception removes the temporary
    directory; :meth:`commit` must be called explicitly once every row is written.
    ``row_shape`` is the shape of one item's positions: ``()`` (default) stores (B, K)
    logits per write, ``(L,)`` stores (B, L, K) (a block of L tokens per dataset index).
    ``alignment`` (see :class:`softlabel.cache.format.Manifest`): a teacher with another
    tokenizer, whose rows come with the mask of the positions that have one.

    ``teacher_classes``: how many logits the teacher gives per position when that exceeds
    ``num_classes`` (a padded vocabulary, see ``softlabel.models.hf.check_vocabularies``,
    which decides ``num_classes``). Each write then takes (B, *row_shape, teacher_classes)
    logits and keeps the first ``num_classes``, as the live teacher path does: the cached
    distribution is the softmax renormalised over them. The manifest's ``teacher_config``
    records it as ``teacher_output_rows``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        kind: str,
        num_samples: int,
        num_classes: int,
        fingerprint: str,
        teacher_sha256: str,
        k: int | None = None,
        dtype: str = "float16",
        teacher_config: dict[str, Any] | None = None,
        inputs_fingerprint: str | None = None,
        overwrite: bool = False,
        block_bytes: int = BLOCK_BYTES,
        row_shape: tuple[int, ...] | list[int] = (),
        alignment: dict[str, Any] | None = None,
        teacher_classes: int | None = None,
    ) -> None:
        validate_layout(kind, num_samples, num_classes, k, dtype)
        row_shape = check_row_shape(row_shape)
        teacher_config = dict(teacher_config or {})
        if teacher_classes is not None:
            if (
                isinstance(teacher_classes, bool)
                or not isinstance(teacher_classes, int)
                or teacher_classes < num_classes
            ):
                raise ValueError(
                    f"teacher_classes={teacher_classes!r} must be an integer >= num_classes="
                    f"{num_classes} (the teacher's logits per position, of which the first "
                    "num_classes are stored)"
                )
            teacher_config["teacher_output_rows"] = teacher_classes
        self.teacher_classes = num_classes if teacher_classes is None else teacher_classes
        block_rows_for((num_samples, num_classes), dtype, block_bytes)  # validates block_bytes
        self.block_bytes = block_bytes
        self.path = Path(path).absolute()
        self.overwrite = overwrite
        self._check_target()
        self.manifest = Manifest(
            kind=kind,
            num_samples=num_samples,
            num_classes=num_classes,
            dtype=dtype,
            fingerprint=str(fingerprint),
            teacher_sha256=str(teacher_sha256),
            k=k,
            index_dtype=index_dtype_for(num_classes) if kind == "topk" else None,
            teacher_config=teacher_config,
            inputs_fingerprint=inputs_fingerprint,
            row_shape=row_shape,
            alignment=None if alignment is None else dict(alignment),
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_dir = _make_temporary_dir(self.path)
        try:
            self._arrays: dict[str, np.memmap] = {
                name: np.lib.format.open_memmap(
                    self.tmp_dir / name, mode="w+", dtype=dtype_, shape=shape
                )
                for name, (shape, dtype_) in self.manifest.array_specs().items()
            }
        except BaseException:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            raise
        self._written = np.zeros(num_samples, dtype=bool)
        self._done = False

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is not None or not self._done:
            self.abort()

    @property
    def rows_written(self) -> int:
        return int(self._written.sum())

    def write(
        self, index: torch.Tensor, logits: torch.Tensor, aligned: torch.Tensor | None = None
    ) -> None:
        """Store the teacher ``logits`` (B, *row_shape, K) of the dataset items ``index`` (B,)
        (K = ``teacher_classes``; the first ``num_classes`` are kept; for a cache with
        ``alignment``, ``aligned`` (B, *row_shape) bool: the positions that have a teacher
        row).

        Top-k: ``TopKLogits.from_logits(logits, k)``, i.e. the k most probable ids, their
        log-probabilities and the exact log tail mass (a log-sum-exp over the other ids of
        the full log-softmax), computed in float32.
        """
        if self._done:
            raise ValueError(f"teacher cache {str(self.path)!r} is already committed or aborted")
        index, logits = self._checked_batch(index, logits)
        rows = index.numpy()
        if (aligned is None) != (self.manifest.alignment is None):
            raise ValueError(
                "aligned (the positions with a teacher row) is given exactly when the cache "
                "has an alignment (a teacher with another tokenizer)"
            )
        if aligned is not None:
            mask = torch.as_tensor(aligned).detach().cpu()
            if tuple(mask.shape) != tuple(logits.shape[:-1]):
                raise ValueError(
                    f"aligned shape={tuple(mask.shape)} must be the logits' positions "
                    f"{tuple(logits.shape[:-1])}"
                )
            self._arrays[ALIGNED][rows] = mask.numpy().astype(np.uint8)
        if self.manifest.kind == "dense":
            values = logits.float().numpy()
            largest = float(np.abs(values).max(initial=0.0))
            if largest > float(np.finfo(self.manifest.dtype).max):
                raise ValueError(
                    f"teacher logits up to |{largest:.4g}| do not fit dtype="
                    f"{self.manifest.dtype!r}; use dtype=float32"
                )
            self._arrays[DENSE_LOGITS][rows] = values
        else:
            assert self.manifest.k is not None
            top = TopKLogits.from_logits(logits.float(), self.manifest.k)
            logprob, tail = top.logprob.numpy(), top.tail.numpy()
            lowest = min(float(logprob.min(initial=0.0)), float(tail.min(initial=0.0)))
            if lowest < -float(np.finfo(self.manifest.dtype).max):
                raise ValueError(
                    f"teacher log-probabilities down to {lowest:.4g} do not fit dtype="
                    f"{self.manifest.dtype!r}; use dtype=float32"
                )
            self._arrays[TOPK_INDEX][rows] = top.index.numpy().astype(self.manifest.index_dtype)
            self._arrays[TOPK_LOGPROB][rows] = logprob.astype(self.manifest.dtype)
            self._arrays[TOPK_TAIL][rows] = tail.astype(self.manifest.dtype)
        self._written[rows] = True

    def commit(self) -> Path:
        """Flush, fsync, write the manifest last and move the cache into place."""
        if self._done:
            raise ValueError(f"teacher cache {str(self.path)!r} is already committed or aborted")
        missing = int((~self._written).sum())
        if missing:
            first = int(np.flatnonzero(~self._written)[0])
            raise ValueError(
                f"teacher cache {str(self.path)!r}: {missing} of {self.manifest.num_samples} rows "
                f"were never written (first missing index {first}); every dataset index is needed"
            )
        files = {}
        for name, array in self._arrays.items():
            array.flush()
            _fsync_file(self.tmp_dir / name)
            block_rows = block_rows_for(array.shape, str(array.dtype), self.block_bytes)
            files[name] = describe_array_file(self.tmp_dir / name, block_rows)
        self._arrays.clear()
        created = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        manifest = dataclasses.replace(
            self.manifest, created=created, cache_id=uuid.uuid4().hex, files=files
        )
        (self.tmp_dir / MANIFEST_NAME).write_text(manifest.to_json())
        _fsync_file(self.tmp_dir / MANIFEST_NAME)
        _fsync_dir(self.tmp_dir)
        self._publish()
        self._done = True
        self.manifest = manifest
        return self.path

    def abort(self) -> None:
        """Drop the temporary directory; the target path is left untouched."""
        self._arrays.clear()
        self._done = True
        shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def _check_target(self) -> None:
        if not self.path.exists():
            return
        if not self.overwrite:
            raise FileExistsError(
                f"teacher cache path={str(self.path)!r} already exists; pass overwrite=true "
                "to replace it"
            )
        foreign = sorted(p.name for p in self.path.iterdir()) if self.path.is_dir() else [""]
        foreign = [name for name in foreign if name not in CACHE_FILES]
        if foreign:
            raise ValueError(
                f"path={str(self.path)!r} exists and is not a teacher cache (it holds {foreign}); "
                "refusing to replace it even with overwrite=true"
            )

    def _publish(self) -> None:
        """``os.replace`` the finished directory onto the target (swapping an old cache out)."""
        self._check_target()
        if not self.path.exists():
            os.replace(self.tmp_dir, self.path)
        else:
            old = self.path.with_name(f"{self.path.name}.old-{secrets.token_hex(4)}")
            os.replace(self.path, old)
            try:
                os.replace(self.tmp_dir, self.path)
            except OSError:
                os.replace(old, self.path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(self.path.parent)

    def _checked_batch(
        self, index: torch.Tensor, logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(index).detach().cpu()
        logits = torch.as_tensor(logits).detach().cpu()
        num_samples, num_classes = self.manifest.num_samples, self.manifest.num_classes
        row_shape = tuple(self.manifest.row_shape)
        if index.ndim != 1 or index.dtype.is_floating_point or index.dtype == torch.bool:
            raise ValueError(
                f"index must be a 1-D integer tensor, got shape={tuple(index.shape)} "
                f"dtype={index.dtype}"
            )
        expected = (index.numel(), *row_shape, self.teacher_classes)
        if tuple(logits.shape) != expected:
            what = "num_classes" if self.teacher_classes == num_classes else "teacher_classes"
            raise ValueError(
                f"logits shape={tuple(logits.shape)} must be (len(index), *row_shape, "
                f"{what}) = {expected} (row_shape={list(row_shape)})"
            )
        logits = logits[..., :num_classes]  # a padded vocabulary: its first num_classes
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_samples):
            raise ValueError(
                f"index values must lie in [0, {num_samples - 1}], got "
                f"[{int(index.min())}, {int(index.max())}]"
            )
        if not torch.isfinite(logits).all():
            raise ValueError("teacher logits contain NaN or inf")
        return index.long(), logits


def write_cache(
    path: str | os.PathLike[str],
    logits: torch.Tensor,
    *,
    kind: str,
    fingerprint: str,
    teacher_sha256: str,
    k: int | None = None,
    dtype: str = "float16",
    teacher_config: dict[str, Any] | None = None,
    inputs_fingerprint: str | None = None,
    overwrite: bool = False,
    block_bytes: int = BLOCK_BYTES,
) -> Path:
    """Write the teacher ``logits`` (N, *row_shape, K) of a whole dataset (row i = dataset
    index i): (N, K) for one position per item, (N, L, K) for blocks of L tokens."""
    if logits.ndim < 2:
        raise ValueError(
            f"logits must be (num_samples, *row_shape, num_classes), got shape="
            f"{tuple(logits.shape)}"
        )
    with CacheWriter(
        path,
        kind=kind,
        num_samples=logits.shape[0],
        num_classes=logits.shape[-1],
        row_shape=tuple(logits.shape[1:-1]),
        fingerprint=fingerprint,
        teacher_sha256=teacher_sha256,
        k=k,
        dtype=dtype,
        teacher_config=teacher_config,
        inputs_fingerprint=inputs_fingerprint,
        overwrite=overwrite,
        block_bytes=block_bytes,
    ) as writer:
        writer.write(torch.arange(logits.shape[0]), logits)
        return writer.commit()


def _make_temporary_dir(path: Path) -> Path:
    """A new empty ``<path>.tmp-<random>`` beside ``path`` (mode 0o777 minus the umask)."""
    while True:
        candidate = path.with_name(f"{path.name}.tmp-{secrets.token_hex(6)}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
