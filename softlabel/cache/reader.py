"""Reading a teacher cache: validation against the caller's expectations and lookups.

The arrays are memory-mapped lazily, once per process: a :class:`TeacherCache` pickles
as its path and validated manifest, so dataloader workers and DDP ranks each map the
files on first use and share the pages through the OS page cache.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from softlabel.cache.format import (
    DENSE_LOGITS,
    TOPK_INDEX,
    TOPK_LOGPROB,
    Manifest,
    read_manifest,
)

#: floor of the per-class leftover probability, so reconstructed logits stay finite
LEFTOVER_FLOOR = torch.finfo(torch.float32).tiny


def reconstruct_topk_logits(
    top_index: torch.Tensor, top_logprob: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Log of the distribution rebuilt from the top-k log-probabilities (B, k) at T = 1.

    ``p_c = exp(top_logprob)`` for the k kept classes; every other class gets
    ``r = max(0, 1 - sum_kept p) / (K - k)`` (floored at ``LEFTOVER_FLOOR``). Returns
    ``log p`` (B, K), so that ``softmax(log p / T)`` is the reconstruction softened at T.
    """
    k = top_index.shape[-1]
    if not 1 <= k < num_classes:
        raise ValueError(f"k={k} must be in [1, num_classes - 1] with num_classes={num_classes}")
    top_logprob = top_logprob.float()
    leftover = (1.0 - top_logprob.exp().sum(dim=-1, keepdim=True)).clamp_min(0.0)
    fill = (leftover / (num_classes - k)).clamp_min(LEFTOVER_FLOOR).log()
    logits = fill.expand(top_index.shape[0], num_classes).clone()
    return logits.scatter_(1, top_index.long(), top_logprob)


class TeacherCache:
    """A validated, lazily memory-mapped teacher cache. Build it with :meth:`open`."""

    def __init__(self, path: str | os.PathLike[str], manifest: Manifest) -> None:
        self.path = Path(path).absolute()
        self.manifest = manifest
        self._arrays: dict[str, np.ndarray] | None = None

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        fingerprint: str | None = None,
        num_classes: int | None = None,
        teacher_sha256: str | None = None,
        inputs_fingerprint: str | None = None,
    ) -> TeacherCache:
        """Open the cache at ``path``, refusing it unless it matches every given expectation.

        Raises FileNotFoundError (no such directory) or ValueError (incomplete, corrupt,
        another format version, or a field that differs from the expected value).
        ``inputs_fingerprint`` is only compared when the cache recorded one.
        """
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
        return cls(path, manifest)

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
    def nbytes(self) -> int:
        """Bytes on disk of the arrays (headers included) and the manifest."""
        return sum(entry.stat().st_size for entry in self.path.iterdir() if entry.is_file())

    def __len__(self) -> int:
        return self.manifest.num_samples

    def __repr__(self) -> str:
        k = f", k={self.k}" if self.k is not None else ""
        return (
            f"TeacherCache({str(self.path)!r}, kind={self.kind!r}{k}, "
            f"num_samples={self.num_samples}, num_classes={self.num_classes})"
        )

    # --- lookups ----------------------------------------------------------------------------
    def lookup(self, index: torch.Tensor) -> torch.Tensor:
        """Teacher logits (B, K) float32 of the dataset items ``index`` (B,), on ``index``'s device.

        Dense: the stored logits. Top-k: :func:`reconstruct_topk_logits` of the stored rows.
        """
        index = torch.as_tensor(index)
        rows = self._checked_rows(index)
        arrays = self._mapped()
        if self.kind == "dense":
            logits = torch.from_numpy(arrays[DENSE_LOGITS][rows]).float()
        else:
            top_index = torch.from_numpy(arrays[TOPK_INDEX][rows].astype(np.int64))
            top_logprob = torch.from_numpy(arrays[TOPK_LOGPROB][rows]).float()
            logits = reconstruct_topk_logits(top_index, top_logprob, self.num_classes)
        return logits.to(index.device)

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
            current = read_manifest(self.path)
            if current != self.manifest:
                raise ValueError(
                    f"teacher cache {str(self.path)!r} changed since it was opened (created "
                    f"{self.manifest.created!r}, now {current.created!r}); open it again"
                )
            self._arrays = {
                name: np.load(self.path / name, mmap_mode="r")
                for name in self.manifest.array_specs()
            }
        return self._arrays

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "manifest": self.manifest, "_arrays": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
