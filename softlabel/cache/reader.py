"""Reading a teacher cache: validation against the caller's expectations and lookups.

The arrays are memory-mapped lazily, once per process: a :class:`TeacherCache` pickles
as its path and validated manifest, so dataloader workers and DDP ranks each map the
files on first use and share the pages through the OS page cache.

Content checks (``verify``): ``"lazy"`` (default) hashes each block of rows the first
time a lookup in this process touches it and compares it with the manifest; ``"full"``
hashes every block when the arrays are mapped; ``"none"`` skips the block hashes. In
every mode the headers, file sizes and the manifest's ``cache_id`` are checked, and each
lookup notices a cache replaced on disk since it was opened.

What a top-k lookup returns (``tail``): ``"bucket"`` (default) the stored reference as a
``TopKLogits`` (ids, log-probabilities, log tail mass) for ``topk_distillation_loss``;
``"uniform"`` dense logits with the tail mass spread uniformly over the other classes.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from softlabel.cache.format import (
    ALIGNED,
    DENSE_LOGITS,
    MANIFEST_NAME,
    TOPK_INDEX,
    TOPK_LOGPROB,
    TOPK_TAIL,
    VERIFY_MODES,
    Manifest,
    check_array_file,
    read_manifest,
    verify_block,
)
from softlabel.functional.topk import TopKLogits

#: floor of the per-class leftover probability, so reconstructed logits stay finite
LEFTOVER_FLOOR = torch.finfo(torch.float32).tiny
#: what a top-k lookup returns: the k + 1 buckets, or dense logits with a uniform tail
TAIL_MODES = ("bucket", "uniform")


def derived_tail(top_logprob: torch.Tensor) -> torch.Tensor:
    """``log(max(0, 1 - sum exp(top_logprob)))`` (...), in float64 then float32: the tail of
    a version-2 cache, which did not store it (``-inf`` where the rounded sum reaches 1)."""
    leftover = (1.0 - top_logprob.double().exp().sum(dim=-1)).clamp_min(0.0)
    return leftover.log().float()


def reconstruct_topk_logits(
    top_index: torch.Tensor,
    top_logprob: torch.Tensor,
    num_classes: int,
    tail: torch.Tensor | None = None,
) -> torch.Tensor:
    """Log of the distribution rebuilt from the top-k log-probabilities (..., k) at T = 1.

    ``p_c = exp(top_logprob)`` for the k kept classes; every other class gets
    ``r = R / (K - k)`` with ``R = exp(tail)`` the stored tail mass, or without ``tail``
    ``R = max(0, 1 - sum_kept p)`` (``r`` floored at ``LEFTOVER_FLOOR``). Returns ``log p``
    (..., K), so that ``softmax(log p / T)`` is the reconstruction softened at T. At T > 1 its
    tail is an upper bound of the teacher's (see ``topk_distillation_loss``).
    """
    k = top_index.shape[-1]
    if not 1 <= k < num_classes:
        raise ValueError(f"k={k} must be in [1, num_classes - 1] with num_classes={num_classes}")
    top_logprob = top_logprob.float()
    if tail is None:
        tail = derived_tail(top_logprob)
    fill = (tail.float() - math.log(num_classes - k)).clamp_min(math.log(LEFTOVER_FLOOR))
    logits = fill.unsqueeze(-1).expand(*top_index.shape[:-1], num_classes).clone()
    return logits.scatter_(-1, top_index.long(), top_logprob)


class TeacherCache:
    """A validated, lazily memory-mapped teacher cache. Build it with :meth:`open`."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        manifest: Manifest,
        *,
        verify: str = "lazy",
        tail: str = "bucket",
    ) -> None:
        self.path = Path(path).absolute()
        self.manifest = manifest
        self.verify_mode = check_verify(verify)
        self.tail = check_tail(tail)
        self._reset()

    def _reset(self) -> None:
        """Forget this process's mapping (a pickled copy maps and verifies on its own)."""
        self._arrays: dict[str, np.ndarray] | None = None
        self._unverified: dict[str, np.ndarray] = {}  # per file: blocks not yet hashed
        self._manifest_stat: tuple[int, ...] | None = None

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        fingerprint: str | None = None,
        num_classes: int | None = None,
        teacher_sha256: str | None = None,
        inputs_fingerprint: str | None = None,
        verify: str = "lazy",
        tail: str = "bucket",
    ) -> TeacherCache:
        """Open the cache at ``path``, refusing it unless it matches every given expectation.

        Raises FileNotFoundError (no such directory) or ValueError (incomplete, corrupt,
        another format version, or a field that differs from the expected value).
        ``inputs_fingerprint`` is only compared when the cache recorded one. ``verify``
        (``"lazy"``, ``"full"`` or ``"none"``) says when the rows' content hashes are
        checked: on first read of each block, all of them now, or never. ``tail`` says what
        a top-k lookup returns: ``"bucket"`` a ``TopKLogits``, ``"uniform"`` dense logits
        (:func:`reconstruct_topk_logits`); a dense cache ignores it.
        """
        verify = check_verify(verify)
        tail = check_tail(tail)
        manifest = read_manifest(Path(path))
        expected = {
            "fingerprint": fingerprint,
            "num_classes": num_classes,
            "teacher_sha256": teacher_sha256,
            "inputs_fingerprint": inputs_fingerprint,
        }
        for name, want in expected.items():
            have = getattr(manifest, name)
            if name == "inputs_fingerprint" and have is None:
                continue
            if want is not None and have != want:
                raise ValueError(
                    f"teacher cache {str(path)!r} does not match: {name} mismatch: the cache has "
                    f"{name}={have!r}, expected {name}={want!r}; rebuild it with softlabel-cache "
                    "for this dataset and teacher"
                )
        cache = cls(path, manifest, verify=verify, tail=tail)
        if verify == "full":
            cache.verify()
        return cache

    # --- what the cache holds -------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def k(self) -> int | None:
        return self.manifest.k

    @property
    def num_samples(self) -> int:
        return self.manifest.num_samples

    @property
    def num_classes(self) -> int:
        return self.manifest.num_classes

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint

    @property
    def teacher_sha256(self) -> str:
        return self.manifest.teacher_sha256

    @property
    def alignment(self) -> dict[str, Any] | None:
        """A teacher with another tokenizer than the data's: what the manifest records of the
        two tokenizers and the aligned positions (None: the data's tokenizer)."""
        return self.manifest.alignment

    @property
    def row_shape(self) -> tuple[int, ...]:
        """Shape of one dataset item's positions: ``()`` or ``(L,)``."""
        return tuple(self.manifest.row_shape)

    @property
    def bytes_per_token(self) -> int:
        """Bytes stored per position (token): K values (dense), or k ids + k log-probabilities
        + 1 tail value (top-k)."""
        return self.manifest.bytes_per_token

    @property
    def nbytes(self) -> int:
        """Bytes on disk of the arrays (headers included) and the manifest."""
        return sum(entry.stat().st_size for entry in self.path.iterdir() if entry.is_file())

    def __len__(self) -> int:
        return self.manifest.num_samples

    def __repr__(self) -> str:
        k = f", k={self.k}, tail={self.tail!r}" if self.k is not None else ""
        rows = f", row_shape={list(self.row_shape)}" if self.row_shape else ""
        return (
            f"TeacherCache({str(self.path)!r}, kind={self.kind!r}{k}, "
            f"num_samples={self.num_samples}{rows}, num_classes={self.num_classes}, "
            f"bytes_per_token={self.bytes_per_token}, version={self.manifest.version})"
        )

    # --- lookups ----------------------------------------------------------------------------
    def lookup(self, index: torch.Tensor) -> torch.Tensor | TopKLogits:
        """The teacher's output for the dataset items ``index`` (B,), on ``index``'s device.

        Dense: the stored logits (B, *row_shape, K) float32. Top-k with ``tail="bucket"``:
        ``TopKLogits`` of ids (B, *row_shape, k) int64, log-probabilities (B, *row_shape, k)
        and log tail mass (B, *row_shape) float32 (a version-2 cache's tail is
        :func:`derived_tail`); with ``tail="uniform"``: :func:`reconstruct_topk_logits`.
        """
        index = torch.as_tensor(index)
        rows = self._checked_rows(index)
        arrays = self._mapped()
        self._check_unchanged()
        if self._unverified:  # lazy (and full, in a process that did not open the cache)
            self._verify_rows(rows)
        if self.kind == "dense":
            logits = torch.from_numpy(arrays[DENSE_LOGITS][rows]).float()
        else:
            top_index = torch.from_numpy(arrays[TOPK_INDEX][rows].astype(np.int64))
            top_logprob = torch.from_numpy(arrays[TOPK_LOGPROB][rows]).float()
            if TOPK_TAIL in arrays:
                tail = torch.from_numpy(arrays[TOPK_TAIL][rows]).float()
            else:
                tail = derived_tail(top_logprob)
            if self.tail == "bucket":
                return TopKLogits(top_index, top_logprob, tail).to(index.device)
            logits = reconstruct_topk_logits(top_index, top_logprob, self.num_classes, tail)
        return logits.to(index.device)

    def lookup_aligned(self, index: torch.Tensor) -> torch.Tensor:
        """(B, *row_shape) bool on ``index``'s device: the positions of the items ``index``
        that have a teacher row (a cache with an ``alignment`` only)."""
        if self.alignment is None:
            raise ValueError(
                f"teacher cache {str(self.path)!r} has no alignment: its teacher uses the data's "
                "tokenizer, every position has a row"
            )
        index = torch.as_tensor(index)
        rows = self._checked_rows(index)
        arrays = self._mapped()
        self._check_unchanged()
        if self._unverified:
            self._verify_rows(rows)
        return torch.from_numpy(arrays[ALIGNED][rows] != 0).to(index.device)

    def _checked_rows(self, index: torch.Tensor) -> np.ndarray:
        if index.ndim != 1 or index.dtype.is_floating_point or index.dtype == torch.bool:
            raise ValueError(
                f"index must be a 1-D integer tensor of dataset indices, got "
                f"shape={tuple(index.shape)} dtype={index.dtype}"
            )
        rows = index.detach().cpu().numpy().astype(np.int64, copy=False)
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_samples):
            raise ValueError(
                f"index values must lie in [0, {self.num_samples - 1}] (the cache's num_samples="
                f"{self.num_samples}), got [{rows.min()}, {rows.max()}]"
            )
        return rows

    def _mapped(self) -> dict[str, np.ndarray]:
        """Map the arrays in this process on first use, checking the cache was not replaced."""
        if self._arrays is None:
            self._manifest_stat = self._stat_manifest()
            current = read_manifest(self.path)
            self._refuse_if_replaced(current)
            arrays = {
                name: check_array_file(self.path / name, shape, dtype, self.manifest.files[name])
                for name, (shape, dtype) in self.manifest.array_specs().items()
            }
            # the directory may have been swapped between reading the manifest and mapping
            self._check_unchanged()
            self._unverified = {
                name: np.ones(len(self.manifest.files[name]["block_sha256"]), dtype=bool)
                for name in arrays
            }
            if self.verify_mode == "none":
                self._unverified = {}
            self._arrays = arrays
        return self._arrays

    def verify(self) -> None:
        """Hash every block of every array now (in this process) and compare with the
        manifest; ValueError naming the file and rows of the first mismatch."""
        arrays = self._mapped()
        for name, array in arrays.items():
            recorded = self.manifest.files[name]
            for block in range(len(recorded["block_sha256"])):
                verify_block(self.path / name, array, recorded, block)
        self._unverified = {}

    def _verify_rows(self, rows: np.ndarray) -> None:
        """Hash the blocks holding ``rows`` that this process has not checked yet."""
        assert self._arrays is not None
        for name in list(self._unverified):
            pending = self._unverified[name]
            recorded = self.manifest.files[name]
            blocks = np.unique(rows // recorded["block_rows"])
            for block in blocks[pending[blocks]]:
                verify_block(self.path / name, self._arrays[name], recorded, int(block))
                pending[block] = False
            if not pending.any():
                del self._unverified[name]

    def _stat_manifest(self) -> tuple[int, ...] | None:
        try:
            stat = os.stat(self.path / MANIFEST_NAME)
        except OSError:
            return None
        return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)

    def _check_unchanged(self) -> None:
        """Refuse to go on when the manifest on disk is no longer the one this cache opened
        (a cheap ``stat`` per lookup; the manifest is re-read only when that changed)."""
        stat = self._stat_manifest()
        if stat is not None and stat == self._manifest_stat:
            return
        try:
            current = read_manifest(self.path)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"teacher cache {str(self.path)!r} changed since it was opened (cache_id "
                f"{self.manifest.cache_id!r}): it can no longer be read ({err}); open it again"
            ) from err
        self._refuse_if_replaced(current)
        self._manifest_stat = stat

    def _refuse_if_replaced(self, current: Manifest) -> None:
        if current != self.manifest:
            raise ValueError(
                f"teacher cache {str(self.path)!r} changed since it was opened (cache_id "
                f"{self.manifest.cache_id!r} written {self.manifest.created}, now cache_id "
                f"{current.cache_id!r} written {current.created}); open it again"
            )

    def __getstate__(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "manifest": self.manifest,
            "verify_mode": self.verify_mode,
            "tail": self.tail,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()


def check_tail(tail: Any) -> str:
    """``tail`` if it is one of :data:`TAIL_MODES`, else ValueError naming the choices."""
    if tail not in TAIL_MODES:
        raise ValueError(
            f"tail={tail!r} is not allowed; use one of {TAIL_MODES} (bucket: the k kept ids "
            "plus one tail bucket, exact at T = 1, never over-softened; uniform: dense logits "
            "with the tail spread uniformly, which over-softens the tail at T > 1)"
        )
    return str(tail)


def check_verify(verify: Any) -> str:
    """``verify`` if it is one of :data:`VERIFY_MODES`, else ValueError naming the choices."""
    if verify not in VERIFY_MODES:
        raise ValueError(
            f"verify={verify!r} is not allowed; use one of {VERIFY_MODES} (lazy: check each "
            "block of rows on first read; full: check every block when opening; none: no "
            "content check)"
        )
    return str(verify)
