"""On-disk format of a teacher cache: file names, the manifest and its validation.

A cache is a directory::

    manifest.json          written last; its presence marks a complete cache
    logits.npy             dense: (N, K) float16|float32 teacher logits
    topk_index.npy         top-k: (N, k) int16|int32 class indices, most probable first
    topk_logprob.npy       top-k: (N, k) float16|float32 log-probabilities at T = 1

Row ``i`` of every array holds the teacher's output for dataset index ``i``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
DENSE_LOGITS = "logits.npy"
TOPK_INDEX = "topk_index.npy"
TOPK_LOGPROB = "topk_logprob.npy"
KINDS = ("dense", "topk")
VALUE_DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class Manifest:
    """What a cache holds and what it was computed from.

    ``k`` and ``index_dtype`` are ``None`` for a dense cache. ``fingerprint`` identifies the
    dataset (its arrays); ``inputs_fingerprint`` (``None`` if unknown) also covers the input
    preprocessing (normalisation statistics of the train split) the teacher saw.
    """

    kind: str
    num_samples: int
    num_classes: int
    dtype: str
    fingerprint: str
    teacher_sha256: str
    k: int | None = None
    index_dtype: str | None = None
    inputs_fingerprint: str | None = None
    teacher_config: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        validate_layout(self.kind, self.num_samples, self.num_classes, self.k, self.dtype)
        if self.kind == "topk" and self.index_dtype not in ("int16", "int32"):
            raise ValueError(
                f"index_dtype={self.index_dtype!r} is not allowed for a top-k cache; "
                "use 'int16' or 'int32'"
            )

    def array_specs(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """File name -> (shape, dtype) of every array this cache must hold."""
        if self.kind == "dense":
            return {DENSE_LOGITS: ((self.num_samples, self.num_classes), self.dtype)}
        assert self.k is not None and self.index_dtype is not None
        shape = (self.num_samples, self.k)
        return {TOPK_INDEX: (shape, self.index_dtype), TOPK_LOGPROB: (shape, self.dtype)}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str) -> Manifest:
        """Build from a parsed ``manifest.json``; refuses unknown versions and missing fields."""
        version = data.get("version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"teacher cache {source}: version mismatch: the cache has version={version!r}, "
                f"expected version={FORMAT_VERSION}; rebuild it with softlabel-cache"
            )
        required = ("kind", "num_samples", "num_classes", "dtype", "fingerprint", "teacher_sha256")
        missing = [name for name in required if name not in data]
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if missing or unknown:
            raise ValueError(
                f"teacher cache {source}: corrupt manifest: missing fields {missing}, "
                f"unknown fields {unknown}"
            )
        return cls(**data)


def index_dtype_for(num_classes: int) -> str:
    """Smallest signed integer type that holds class indices ``0 .. num_classes - 1``."""
    return "int16" if num_classes <= np.iinfo(np.int16).max + 1 else "int32"


def validate_layout(
    kind: str, num_samples: int, num_classes: int, k: int | None, dtype: str
) -> None:
    """Raise ValueError unless (kind, N, K, k, dtype) describe a valid cache."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not allowed; use one of {KINDS}")
    if dtype not in VALUE_DTYPES:
        raise ValueError(f"dtype={dtype!r} is not allowed; use one of {VALUE_DTYPES}")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples={num_samples!r} must be a positive integer")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r} must be an integer >= 2")
    if kind == "dense":
        if k is not None:
            raise ValueError(f"k={k!r} is only meaningful for kind='topk'; use k=None")
        return
    if not isinstance(k, int) or not 1 <= k < num_classes:
        raise ValueError(
            f"k={k!r} must be an integer in [1, num_classes - 1] = [1, {num_classes - 1}] "
            "for a top-k cache (keeping every class is kind='dense')"
        )


def read_manifest(path: Path) -> Manifest:
    """Read and validate ``path / manifest.json`` and the shapes of the arrays beside it.

    Raises FileNotFoundError when ``path`` does not exist, ValueError when the directory
    is incomplete (no manifest: an interrupted write) or corrupt.
    """
    if not path.is_dir():
        raise FileNotFoundError(
            f"teacher cache path={str(path)!r} does not exist or is not a directory"
        )
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ValueError(
            f"teacher cache {str(path)!r} is incomplete: no {MANIFEST_NAME} "
            "(an interrupted write?); rebuild it with softlabel-cache"
        )
    try:
        data = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"teacher cache {str(path)!r}: corrupt {MANIFEST_NAME}: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"teacher cache {str(path)!r}: corrupt {MANIFEST_NAME}: not an object")
    manifest = Manifest.from_dict(data, source=repr(str(path)))
    for name, (shape, dtype) in manifest.array_specs().items():
        check_array_file(path / name, shape, dtype)
    return manifest


def check_array_file(file: Path, shape: tuple[int, ...], dtype: str) -> None:
    """Raise ValueError unless ``file`` is a ``.npy`` array of this shape and dtype."""
    try:
        array = np.load(file, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise ValueError(f"teacher cache is corrupt: cannot read {str(file)!r}: {err}") from err
    if array.shape != shape or array.dtype != np.dtype(dtype):
        raise ValueError(
            f"teacher cache is corrupt: {str(file)!r} holds shape={array.shape} "
            f"dtype={array.dtype}, the manifest expects shape={shape} dtype={dtype}"
        )
