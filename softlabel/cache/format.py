"""On-disk format of a teacher cache: file names, the manifest and its validation.

A cache is a directory::

    manifest.json          written last; its presence marks a complete cache
    logits.npy             dense: (N, *row_shape, K) float16|float32 teacher logits
    topk_index.npy         top-k: (N, *row_shape, k) int16|int32 class ids, most probable first
    topk_logprob.npy       top-k: (N, *row_shape, k) float16|float32 log-probabilities at T = 1
    topk_tail.npy          top-k: (N, *row_shape) float16|float32 log of the remaining mass
    aligned.npy            teacher of another tokenizer: (N, *row_shape) uint8, 1 where the
                           position has a teacher counterpart (its row is the teacher's)

Row ``i`` of every array holds the teacher's output for dataset index ``i``: one position
(``row_shape = []``, e.g. an image) or several (``row_shape = [L]``, a block of L tokens).
Version 2 (still read) had no ``row_shape`` and no ``topk_tail.npy``. A cache of a teacher
with another tokenizer than the data's (``alignment`` in the manifest: both tokenizers'
fingerprints and the aligned share) holds rows of the teacher's vocabulary at the student's
positions, and ``aligned.npy`` says which positions have one.

The manifest records, per array file, its size, the SHA-256 of its ``.npy`` header and
the SHA-256 of each block of ``block_rows`` rows (about :data:`BLOCK_BYTES` each), and a
random ``cache_id`` drawn at every commit: a reader checks the header and size on open,
the blocks lazily on first read (or all at once, ``verify="full"``), and the
``cache_id`` to notice a cache replaced while in use.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from softlabel._manifest import check_listed_files, listed_file_paths

FORMAT_VERSION = 3
#: versions this release reads: 2 (no row_shape, no stored tail: derived on read) and 3
READABLE_VERSIONS = (2, 3)
MANIFEST_NAME = "manifest.json"
DENSE_LOGITS = "logits.npy"
TOPK_INDEX = "topk_index.npy"
TOPK_LOGPROB = "topk_logprob.npy"
TOPK_TAIL = "topk_tail.npy"
ALIGNED = "aligned.npy"
KINDS = ("dense", "topk")
VALUE_DTYPES = ("float16", "float32")
#: target size of a hashed block of rows: large enough that the hashes stay a small list,
#: small enough that verifying a block on first use takes a fraction of a second
BLOCK_BYTES = 64 << 20
#: how a reader checks the arrays' bytes against the manifest's block hashes
VERIFY_MODES = ("lazy", "full", "none")
#: what the manifest's ``alignment`` records
ALIGNMENT_FIELDS = (
    "student_tokenizer",
    "teacher_tokenizer",
    "data.tokenizer",
    "teacher.tokenizer",
    "scored",
    "aligned",
)
_FILE_FIELDS = {
    "size": int,
    "data_offset": int,
    "header_sha256": str,
    "block_rows": int,
    "block_sha256": list,
}


@dataclass(frozen=True)
class Manifest:
    """What a cache holds and what it was computed from.

    ``k`` and ``index_dtype`` are ``None`` for a dense cache. ``row_shape`` is the shape of
    the positions of one dataset item (``[]``: one position; ``[L]``: L tokens);
    ``bytes_per_token`` the bytes stored per position (derived from the layout: K values for
    dense; k ids, k log-probabilities and one tail value for top-k). ``fingerprint`` identifies the
    dataset (its arrays); ``inputs_fingerprint`` (``None`` if unknown) also covers the input
    preprocessing (normalisation statistics of the train split) the teacher saw.
    ``cache_id`` is drawn at random when the cache is committed (a rewrite with the same
    content gets another); ``files`` maps each array file to its size, header hash and
    per-block content hashes (see :func:`describe_array_file`). ``alignment`` (None: the
    teacher uses the data's tokenizer) describes a teacher with another tokenizer:
    ``student_tokenizer`` and ``teacher_tokenizer`` (fingerprints), how each was given
    (``data.tokenizer``, ``teacher.tokenizer``), the ``scored`` and ``aligned`` positions.
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
    cache_id: str = ""
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    row_shape: list[int] = field(default_factory=list)
    bytes_per_token: int = 0
    alignment: dict[str, Any] | None = None
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        validate_layout(self.kind, self.num_samples, self.num_classes, self.k, self.dtype)
        if self.kind == "topk" and self.index_dtype not in ("int16", "int32"):
            raise ValueError(
                f"index_dtype={self.index_dtype!r} is not allowed for a top-k cache; "
                "use 'int16' or 'int32'"
            )
        object.__setattr__(self, "row_shape", check_row_shape(self.row_shape))
        if self.alignment is not None:
            fields = set(self.alignment) if isinstance(self.alignment, dict) else set()
            if set(ALIGNMENT_FIELDS) - fields:
                raise ValueError(
                    f"alignment={self.alignment!r} must be a mapping with {sorted(ALIGNMENT_FIELDS)}"
                )
        if self.version < 3 and self.row_shape:
            raise ValueError(
                f"row_shape={self.row_shape} needs format version 3, the manifest says "
                f"version={self.version}"
            )
        expected = self._bytes_per_token()
        if self.bytes_per_token == 0:
            object.__setattr__(self, "bytes_per_token", expected)
        elif self.bytes_per_token != expected:
            raise ValueError(
                f"bytes_per_token={self.bytes_per_token!r} does not match the layout "
                f"(kind={self.kind!r}, k={self.k}, dtype={self.dtype!r}): expected {expected}"
            )

    @property
    def has_tail(self) -> bool:
        """Whether a top-k cache stores its tail (``topk_tail.npy``, from version 3)."""
        return self.kind == "topk" and self.version >= 3

    def _bytes_per_token(self) -> int:
        value = np.dtype(self.dtype).itemsize
        if self.kind == "dense":
            return self.num_classes * value
        assert self.k is not None and self.index_dtype is not None
        tail = value if self.version >= 3 else 0
        return self.k * (np.dtype(self.index_dtype).itemsize + value) + tail

    def array_specs(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """File name -> (shape, dtype) of every array this cache must hold."""
        rows = (self.num_samples, *self.row_shape)
        if self.kind == "dense":
            return {
                DENSE_LOGITS: ((*rows, self.num_classes), self.dtype),
                **self._aligned_spec(rows),
            }
        assert self.k is not None and self.index_dtype is not None
        shape = (*rows, self.k)
        specs = {TOPK_INDEX: (shape, self.index_dtype), TOPK_LOGPROB: (shape, self.dtype)}
        if self.has_tail:
            specs[TOPK_TAIL] = (rows, self.dtype)
        return {**specs, **self._aligned_spec(rows)}

    def _aligned_spec(self, rows: tuple[int, ...]) -> dict[str, tuple[tuple[int, ...], str]]:
        return {} if self.alignment is None else {ALIGNED: (rows, "uint8")}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str) -> Manifest:
        """Build from a parsed ``manifest.json``; refuses unknown versions and missing fields."""
        version = data.get("version")
        if version == 1:
            raise ValueError(
                f"teacher cache {source} has format version 1, which records no content "
                f"hashes, so its arrays cannot be checked against silent corruption; rebuild "
                f"it with softlabel-cache (this release reads versions {READABLE_VERSIONS})"
            )
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            raise ValueError(
                f"teacher cache {source}: version mismatch: the cache has version={version!r}, "
                f"expected version={FORMAT_VERSION} (this release also reads version 2); "
                "rebuild it with softlabel-cache"
            )
        required = (
            "kind",
            "num_samples",
            "num_classes",
            "dtype",
            "fingerprint",
            "teacher_sha256",
            "cache_id",
            "files",
        )
        missing = [name for name in required if name not in data]
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if missing or unknown:
            raise ValueError(
                f"teacher cache {source}: corrupt manifest: missing fields {missing}, "
                f"unknown fields {unknown}"
            )
        try:
            manifest = cls(**data)
        except (TypeError, ValueError) as err:
            raise ValueError(f"teacher cache {source}: corrupt manifest: {err}") from err
        manifest.check_files(source=source)
        return manifest

    def check_files(self, *, source: str) -> None:
        """Raise ValueError unless ``cache_id`` and ``files`` describe every array of a
        committed cache: exactly one entry per array file (the rule of
        :mod:`softlabel._manifest`), each with a hash per block of rows."""
        specs = self.array_specs()
        check_listed_files(self.files, specs, manifest=f"of teacher cache {source}")
        problems = []
        if not isinstance(self.cache_id, str) or not self.cache_id:
            problems.append(f"cache_id={self.cache_id!r} is not a non-empty string")
        for name, entry in self.files.items():
            if not isinstance(entry, dict) or sorted(entry) != sorted(_FILE_FIELDS):
                problems.append(f"files[{name!r}] needs exactly the keys {sorted(_FILE_FIELDS)}")
                continue
            wrong = [k for k, kind in _FILE_FIELDS.items() if not isinstance(entry[k], kind)]
            if wrong or entry["block_rows"] < 1:
                problems.append(f"files[{name!r}] has invalid {wrong or ['block_rows']}")
                continue
            blocks = math.ceil(self.num_samples / entry["block_rows"])
            if len(entry["block_sha256"]) != blocks:
                problems.append(
                    f"files[{name!r}] has {len(entry['block_sha256'])} block hashes, "
                    f"{self.num_samples} rows in blocks of {entry['block_rows']} need {blocks}"
                )
        if problems:
            raise ValueError(
                f"teacher cache {source}: corrupt manifest: {'; '.join(problems)}; rebuild it "
                "with softlabel-cache"
            )


def check_row_shape(row_shape: Any) -> list[int]:
    """``row_shape`` as a list of positive ints (``[]`` for one position per item)."""
    if isinstance(row_shape, (list, tuple)) and all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in row_shape
    ):
        return [int(n) for n in row_shape]
    raise ValueError(
        f"row_shape={row_shape!r} must be a list of positive integers: [] for one position "
        "per dataset item (an image), [L] for a block of L tokens"
    )


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
    """Read and validate ``path / manifest.json`` and the shapes of the arrays beside it
    (each listed, inside ``path`` with symlinks resolved: :mod:`softlabel._manifest`).

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
    specs = manifest.array_specs()
    files = listed_file_paths(path, manifest.files, specs, manifest=repr(str(manifest_path)))
    for name, (shape, dtype) in specs.items():
        check_array_file(files[name], shape, dtype, manifest.files[name])
    return manifest


def check_array_file(
    file: Path, shape: tuple[int, ...], dtype: str, recorded: dict[str, Any] | None = None
) -> np.memmap:
    """The read-only memmap of ``file``; ValueError unless it is a ``.npy`` array of this
    shape and dtype and, given the manifest's ``recorded`` entry, of that size and header.

    The rows' content is not read here (see :func:`verify_block`).
    """
    try:
        array = np.load(file, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise ValueError(f"teacher cache is corrupt: cannot read {str(file)!r}: {err}") from err
    if array.shape != shape or array.dtype != np.dtype(dtype):
        raise ValueError(
            f"teacher cache is corrupt: {str(file)!r} holds shape={array.shape} "
            f"dtype={array.dtype}, the manifest expects shape={shape} dtype={dtype}"
        )
    if recorded is not None:
        size = file.stat().st_size
        header = _header_sha256(file, array.offset)
        if size != recorded["size"] or array.offset != recorded["data_offset"]:
            raise ValueError(
                f"teacher cache is corrupt: {str(file)!r} is {size} bytes with data at byte "
                f"{array.offset}, the manifest recorded {recorded['size']} bytes with data at "
                f"byte {recorded['data_offset']}; rebuild it with softlabel-cache"
            )
        if header != recorded["header_sha256"]:
            raise ValueError(
                f"teacher cache is corrupt: the .npy header of {str(file)!r} differs from the "
                "one recorded in the manifest (header_sha256); rebuild it with softlabel-cache"
            )
    return array


def _header_sha256(file: Path, data_offset: int) -> str:
    with open(file, "rb") as handle:
        return hashlib.sha256(handle.read(data_offset)).hexdigest()


def block_rows_for(shape: tuple[int, ...], dtype: str, block_bytes: int = BLOCK_BYTES) -> int:
    """Rows per hashed block: as many whole rows as fit in ``block_bytes`` (at least 1)."""
    if isinstance(block_bytes, bool) or not isinstance(block_bytes, int) or block_bytes < 1:
        raise ValueError(f"block_bytes={block_bytes!r} must be a positive integer")
    row_bytes = math.prod(shape[1:]) * np.dtype(dtype).itemsize
    return max(1, block_bytes // max(1, row_bytes))


def block_sha256(array: np.ndarray, block: int, block_rows: int) -> str:
    """Hex SHA-256 of the bytes of rows ``[block * block_rows, (block + 1) * block_rows)``."""
    rows = np.ascontiguousarray(array[block * block_rows : (block + 1) * block_rows])
    return hashlib.sha256(rows.reshape(-1).view(np.uint8)).hexdigest()


def describe_array_file(file: Path, block_rows: int) -> dict[str, Any]:
    """The manifest's ``files`` entry of a finished ``.npy`` file: its size, where the rows
    start, the SHA-256 of the header and of every block of ``block_rows`` rows."""
    array = np.load(file, mmap_mode="r")
    blocks = math.ceil(array.shape[0] / block_rows)
    return {
        "size": file.stat().st_size,
        "data_offset": int(array.offset),
        "header_sha256": _header_sha256(file, array.offset),
        "block_rows": int(block_rows),
        "block_sha256": [block_sha256(array, b, block_rows) for b in range(blocks)],
    }


def verify_block(file: Path, array: np.ndarray, recorded: dict[str, Any], block: int) -> None:
    """Raise ValueError unless block ``block`` of ``array`` (mapped from ``file``) has the
    hash the manifest recorded for it."""
    block_rows = recorded["block_rows"]
    if block_sha256(array, block, block_rows) != recorded["block_sha256"][block]:
        first = block * block_rows
        last = min(first + block_rows, array.shape[0]) - 1
        raise ValueError(
            f"teacher cache is corrupt: {str(file)!r} rows {first}..{last} (block {block}) do "
            "not match the content hash recorded when the cache was written: the file was "
            "modified or damaged after it was written; rebuild the cache with softlabel-cache"
        )
