"""Text corpora for causal language models: documents from files (or the Python standard
library's sources), split by document, tokenised and packed into blocks of ``block_size``.

Every item is ``(input_ids, labels, index)``: ``labels`` equals ``input_ids`` with -100
where the block is padded, not shifted; the causal shift happens once, in the loss
(``logits[:, :-1]`` against ``labels[:, 1:]``, as in transformers' ``ForCausalLMLoss``).
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import sys
import sysconfig
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from softlabel.data.datasets import EpochShuffleSampler
from softlabel.data.splits import Split, check_fraction
from softlabel.data.tokenizers import (
    ByteTokenizer,
    encode_documents,
    load_tokenizer,
    token_dtype,
    tokenizer_identity,
    tokenizer_vocab_size,
)

__all__ = [
    "IGNORE_INDEX",
    "PackedBlocks",
    "TextDataModule",
    "expand_files",
    "pack_documents",
    "read_documents",
    "select_documents",
    "split_documents",
    "stdlib_sources",
]

#: label of a padded position (``torch.nn.CrossEntropyLoss``'s default ``ignore_index``)
IGNORE_INDEX = -100
SUFFIXES = (".txt", ".jsonl", ".parquet")
SPLITS = ("train", "val", "test")


# ------------------------------------------------------------------------------ reading
def expand_files(files: Any) -> list[Path]:
    """The files named by ``files``: a path, a glob pattern (``**`` recurses) or a list of
    them, in the order given, each pattern's matches sorted (directories left out)."""
    entries = [files] if isinstance(files, str | os.PathLike) else list(files)
    if not entries:
        raise ValueError("files=[]; give a path, a glob pattern or a list of them")
    paths: list[Path] = []
    seen: dict[Path, str] = {}
    for entry in entries:
        text = os.path.expanduser(os.fspath(entry))
        if glob.has_magic(text):
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
            matches = [m for m in matches if m.is_file()]
            if not matches:
                raise FileNotFoundError(f"files: the pattern {str(entry)!r} matches no file")
        else:
            path = Path(text)
            if path.is_dir():
                raise IsADirectoryError(
                    f"files: {str(entry)!r} is a directory; give its files, e.g. "
                    f"'{os.path.join(str(entry), '*.txt')}'"
                )
            if not path.is_file():
                raise FileNotFoundError(f"files: {str(entry)!r} does not exist")
            matches = [path]
        for path in matches:
            key = path.resolve()
            if key in seen:
                raise ValueError(
                    f"files: {str(path)!r} is named twice (by {seen[key]!r} and "
                    f"{str(entry)!r}); its documents would be in the corpus twice"
                )
            seen[key] = str(entry)
            paths.append(path)
    return paths


def _utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ValueError(
            f"{where}: not valid UTF-8 at byte offset {error.start} (line {line}): {error.reason}"
        ) from None


def _read_txt(path: Path) -> list[bytes]:
    data = path.read_bytes()
    _utf8(data, str(path))
    return [data]


def _encoded(text: str, where: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as error:  # a lone surrogate, e.g. "\ud800" in JSON
        raise ValueError(f"{where}: the text holds a lone surrogate ({error.reason})") from None


def _read_jsonl(path: Path, field: str) -> list[bytes]:
    text = _utf8(path.read_bytes(), str(path))
    documents = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{where}: a line must be a JSON object, got {type(record).__name__}")
        if field not in record:
            raise ValueError(
                f"{where}: no field text_field={field!r}; the line's fields: {sorted(record)}"
            )
        value = record[field]
        if not isinstance(value, str):
            raise ValueError(
                f"{where}: text_field={field!r} holds a {type(value).__name__}; expected a string"
            )
        documents.append(_encoded(value, where))
    return documents


def _read_parquet(path: Path, field: str) -> list[bytes]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except (OSError, pa.ArrowException) as error:
        raise ValueError(f"{path}: cannot read as Parquet: {error}") from error
    if field not in names:
        raise ValueError(f"{path}: no column text_field={field!r}; the columns: {names}")
    column = pq.read_table(path, columns=[field]).column(field)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise ValueError(
            f"{path}: column text_field={field!r} has type {column.type}; expected strings"
        )
    values = column.to_pylist()
    if column.null_count:
        row = next(i for i, v in enumerate(values) if v is None)
        raise ValueError(f"{path}: column text_field={field!r} is null at row {row}")
    return [_encoded(v, f"{path}: row {row}") for row, v in enumerate(values)]


def read_documents(paths: Sequence[Path], text_field: str = "text") -> list[bytes]:
    """Every document of ``paths`` as UTF-8 bytes, file by file.

    ``.txt``: the whole file is one document. ``.jsonl``: one per non-blank line, the
    string field ``text_field``. ``.parquet``: one per row of the string column
    ``text_field``. Text is kept exactly as written (no stripping, no normalisation).
    """
    documents: list[bytes] = []
    for path in paths:
        suffix = path.suffix.lower()
        if suffix == ".txt":
            documents.extend(_read_txt(path))
        elif suffix == ".jsonl":
            documents.extend(_read_jsonl(path, text_field))
        elif suffix == ".parquet":
            documents.extend(_read_parquet(path, text_field))
        else:
            raise ValueError(
                f"files: {str(path)!r} has the extension {suffix or '(none)'!r}; "
                f"allowed: {', '.join(SUFFIXES)}"
            )
    return documents


def stdlib_sources() -> tuple[Path, list[Path]]:
    """``(directory, files)``: the ``.py`` files of this Python's standard library
    (``sysconfig.get_paths()["stdlib"]``), sorted by relative path, without
    ``site-packages``, ``dist-packages`` and ``__pycache__``."""
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise FileNotFoundError(
            f"files=None: the standard library directory {root} does not exist; give files"
        )
    skip = {"site-packages", "dist-packages", "__pycache__"}
    found = []
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = [d for d in subdirectories if d not in skip]
        found += [Path(directory, n) for n in names if n.endswith(".py")]
    found.sort(key=lambda p: p.relative_to(root).as_posix())
    return root, found


def _stdlib_document(path: Path) -> bytes | None:
    """The file's bytes, or ``None`` when they are not UTF-8 (a few test fixtures written
    in other encodings)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return data


# ---------------------------------------------------------------------------- selection
def select_documents(
    count: int,
    load: Callable[[int], bytes | None],
    seed: int,
    max_documents: int | None = None,
    max_bytes: int | None = None,
) -> tuple[np.ndarray, list[bytes]]:
    """``(ids, documents)`` in the order of the permutation seeded by ``seed``.

    Documents are taken in that order (``load(i)``; ``None`` skips document ``i``) until
    ``max_documents`` are kept or the next one would bring the total past ``max_bytes``
    UTF-8 bytes: the kept set is the longest prefix within both caps, no document is cut.
    """
    order = np.random.default_rng(seed).permutation(count)
    ids: list[int] = []
    documents: list[bytes] = []
    total, capped = 0, False
    for i in order.tolist():
        if max_documents is not None and len(ids) == max_documents:
            break
        document = load(i)
        if document is None:
            continue
        if max_bytes is not None and total + len(document) > max_bytes:
            if not ids:
                raise ValueError(
                    f"max_bytes={max_bytes} keeps no document: the first of the seeded "
                    f"order has {len(document)} bytes; raise max_bytes"
                )
            capped = True
            break
        ids.append(i)
        documents.append(document)
        total += len(document)
    if max_documents is not None and len(ids) < max_documents and not capped:
        raise ValueError(f"max_documents={max_documents}; the corpus has only {len(ids)} documents")
    if not ids:
        raise ValueError("the corpus has no document")
    return np.asarray(ids, dtype=np.int64), documents


def split_documents(
    ids: np.ndarray, val_fraction: float, test_fraction: float, hint: str = ""
) -> Split:
    """Split document ids (already in seeded order) by position: the first
    ``round(test_fraction * n)`` are the test split, the next ``round(val_fraction * n)``
    validation, the rest train; each split sorted. A split left empty is an error."""
    n = len(ids)
    sizes = {"test": round(test_fraction * n), "val": round(val_fraction * n)}
    sizes["train"] = n - sizes["test"] - sizes["val"]
    fractions = {"val": f"val_fraction={val_fraction}", "test": f"test_fraction={test_fraction}"}
    for name in SPLITS:
        if sizes[name] < 1:
            change = (
                f"raise {fractions[name]}"
                if name != "train"
                else f"lower {fractions['val']} / {fractions['test']}"
            )
            raise ValueError(
                f"the {name} split has 0 documents ({sizes[name]} of {n}); {change} "
                f"or use more documents{hint}"
            )
    test, val, train = np.split(ids, [sizes["test"], sizes["test"] + sizes["val"]])
    return Split(train=np.sort(train), val=np.sort(val), test=np.sort(test))


# ------------------------------------------------------------------------------ packing
def pack_documents(
    tokens: np.ndarray, counts: np.ndarray, block_size: int, eos_id: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(blocks, lengths)``: the documents' tokens, each followed by ``eos_id``, cut into
    rows of ``block_size``; the last row is right-padded with ``pad_id``. ``lengths[b]`` is
    the number of real tokens of block ``b`` (``block_size`` except perhaps the last)."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum()) + len(counts)
    num_blocks = math.ceil(total / block_size)
    flat = np.full(num_blocks * block_size, pad_id, dtype=tokens.dtype)
    ends = np.cumsum(counts + 1) - 1  # the end-of-document positions
    is_text = np.ones(total, dtype=bool)
    is_text[ends] = False
    flat[:total][is_text] = tokens
    flat[ends] = eos_id
    lengths = np.full(num_blocks, block_size, dtype=np.int64)
    if num_blocks:
        lengths[-1] = total - (num_blocks - 1) * block_size
    return flat.reshape(num_blocks, block_size), lengths


class PackedBlocks(Dataset):
    """Rows ``start .. stop - 1`` of the packed blocks; item ``i`` is
    ``(input_ids, labels, index)`` with ``index = start + i`` (its position in the full
    dataset), ``labels = input_ids`` with ``IGNORE_INDEX`` on padding, all int64. The
    DataLoader fetches a batch with one gather (``__getitems__``)."""

    def __init__(self, blocks: np.ndarray, lengths: np.ndarray, start: int, stop: int) -> None:
        self.blocks, self.lengths = blocks, lengths
        self.start, self.stop = int(start), int(stop)

    def __len__(self) -> int:
        return self.stop - self.start

    def batch(self, keys: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(input_ids, labels, index)`` stacked over positions ``keys``."""
        positions = np.asarray(keys, dtype=np.int64).reshape(-1)
        if len(positions) and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f"positions {keys!r} out of range 0..{len(self) - 1}")
        rows = positions + self.start
        ids = self.blocks[rows].astype(np.int64)
        labels = ids.copy()
        labels[np.arange(ids.shape[1])[None, :] >= self.lengths[rows][:, None]] = IGNORE_INDEX
        return torch.from_numpy(ids), torch.from_numpy(labels), torch.from_numpy(rows)

    def __getitems__(self, keys: Sequence[int]) -> list[tuple[torch.Tensor, ...]]:
        return list(zip(*self.batch(keys), strict=True))

    def __getitem__(self, key: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids, labels, index = self.batch([key])
        return ids[0], labels[0], index[0]


# --------------------------------------------------------------------------- datamodule
def _count(name: str, value: Any, minimum: int, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        allowed = f"an integer >= {minimum}" + (" or null" if optional else "")
        raise ValueError(f"{name}={value!r}; allowed: {allowed}")
    return int(value)


class TextDataModule(L.LightningDataModule):
    """Train / val / test loaders of packed token blocks for causal language modelling.

    ``files``: a path, a glob pattern or a list of them (``.txt``, ``.jsonl``, ``.parquet``;
    see :func:`read_documents`); ``None``: the ``.py`` files of this Python's standard
    library (:func:`stdlib_sources`), one document each, read as bytes, leaving out the
    few that are not UTF-8. ``tokenizer``: ``None`` for byte-level (:class:`ByteTokenizer`),
    or a local Hugging Face tokenizer directory (it needs an ``eos_token``; padding uses
    ``pad_token``, else ``eos_token``).

    Documents are taken in the order of the permutation seeded by ``seed``, up to
    ``max_documents`` and ``max_bytes`` (:func:`select_documents`), and split by document
    (:func:`split_documents`). Each split is packed on its own: its documents in corpus
    order, each followed by the end-of-document id, cut into blocks of ``block_size``, the
    last right-padded. ``index`` runs over the train, then val, then test blocks. The
    train order is the permutation of ``shuffle_seed + epoch`` (default: ``seed``).
    """

    task = "causal_lm"
    has_random_augmentation = False

    def __init__(
        self,
        files: Any = None,
        text_field: str = "text",
        tokenizer: Any = None,
        block_size: int = 128,
        batch_size: int = 16,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        seed: int = 0,
        shuffle_seed: int | None = None,
        max_documents: int | None = None,
        max_bytes: int | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.block_size = _count("block_size", block_size, 2)
        self.batch_size = _count("batch_size", batch_size, 1)
        self.num_workers = _count("num_workers", num_workers, 0)
        self.max_documents = _count("max_documents", max_documents, 1, optional=True)
        self.max_bytes = _count("max_bytes", max_bytes, 1, optional=True)
        self.seed = _count("seed", seed, 0)
        self.shuffle_seed = self.seed if shuffle_seed is None else int(shuffle_seed)
        self.val_fraction = check_fraction("val_fraction", val_fraction)
        self.test_fraction = check_fraction("test_fraction", test_fraction)
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction}; "
                "must be < 1"
            )
        if not isinstance(text_field, str) or not text_field:
            raise ValueError(f"text_field={text_field!r}; allowed: a non-empty string")
        self.text_field = text_field
        self.files = files
        self._tokenizer_spec = tokenizer
        self._ready = False

    # ------------------------------------------------------------------ setup
    def prepare_data(self) -> None:
        self._ensure_ready()

    def setup(self, stage: str | None = None) -> None:
        self._ensure_ready()

    def _corpus(self) -> tuple[int, Callable[[int], bytes | None], str, str]:
        """``(count, load, name, source)`` of the documents before selection."""
        if self.files is None:
            root, paths = stdlib_sources()
            version = f"{sys.version_info.major}.{sys.version_info.minor}"
            source = (
                f"Python {sys.version.split()[0]} standard library at {root} "
                f"({len(paths)} .py files, one document each; non-UTF-8 files left out)"
            )
            self._skipped: list[str] = []

            def load(i: int) -> bytes | None:
                document = _stdlib_document(paths[i])
                if document is None:
                    self._skipped.append(paths[i].relative_to(root).as_posix())
                return document

            return len(paths), load, f"text:stdlib-{version}", source
        paths = expand_files(self.files)
        documents = read_documents(paths, self.text_field)
        if not documents:
            raise ValueError(f"files={self.files!r}: the files hold no document")
        more = f"+{len(paths) - 1}" if len(paths) > 1 else ""
        self._skipped = []
        source = f"{len(documents)} documents from {', '.join(str(p) for p in paths)}"
        return len(documents), documents.__getitem__, f"text:{paths[0].name}{more}", source

    def _ensure_ready(self) -> None:
        """Read, select, split, tokenise and pack, once."""
        if self._ready:
            return
        tokenizer = load_tokenizer(self._tokenizer_spec)
        vocab_size = tokenizer_vocab_size(tokenizer)
        eos = int(tokenizer.eos_token_id)
        pad = getattr(tokenizer, "pad_token_id", None)
        pad = eos if pad is None else int(pad)
        for key, value in (("eos_token_id", eos), ("pad_token_id", pad)):
            if not 0 <= value < vocab_size:
                raise ValueError(f"tokenizer {key}={value} is outside 0..{vocab_size - 1}")
        count, load, name, source = self._corpus()
        ids, documents = select_documents(
            count, load, self.seed, self.max_documents, self.max_bytes
        )
        position = {int(i): k for k, i in enumerate(ids)}
        hint = " (max_documents / max_bytes)" if self.max_documents or self.max_bytes else ""
        split = split_documents(ids, self.val_fraction, self.test_fraction, hint)
        packed, identity = {}, tokenizer_identity(tokenizer)
        for split_name in SPLITS:
            members = [documents[position[int(i)]] for i in getattr(split, split_name)]
            tokens, counts = encode_documents(members, tokenizer)
            if not len(tokens):
                raise ValueError(
                    f"the {split_name} split's {len(members)} documents hold no token "
                    "(empty texts); use more documents or change the seed"
                )
            packed[split_name] = pack_documents(tokens, counts, self.block_size, eos, pad)
        self._tokenizer = tokenizer
        self._vocab_size, self._eos, self._pad = vocab_size, eos, pad
        self._identity, self._name, self._source = identity, name, source
        self._split = split
        self._document_bytes = {
            s: int(sum(len(documents[position[int(i)]]) for i in getattr(split, s))) for s in SPLITS
        }
        self._sizes = {s: len(packed[s][0]) for s in SPLITS}
        self._num_tokens = {s: int(packed[s][1].sum()) for s in SPLITS}
        self._fingerprint = self._hash(packed)
        dtype = token_dtype(vocab_size)
        self._blocks = np.concatenate([packed[s][0] for s in SPLITS]).astype(dtype, copy=False)
        self._lengths = np.concatenate([packed[s][1] for s in SPLITS])
        self._ready = True

    def _hash(self, packed: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
        """sha256 over the tokenizer identity, the block size and each split's blocks and
        block lengths (so the data, the split and the tokenisation all enter)."""
        digest = hashlib.sha256(b"softlabel.text/1|")
        digest.update(f"tokenizer={self._identity}|block_size={self.block_size}|".encode())
        for split_name in SPLITS:
            blocks, lengths = packed[split_name]
            digest.update(f"{split_name}:{blocks.shape}:{blocks.dtype.str}|".encode())
            digest.update(np.ascontiguousarray(blocks).tobytes())
            digest.update(np.ascontiguousarray(lengths, dtype="<i8").tobytes())
        return digest.hexdigest()

    def _get(self, attribute: str) -> Any:
        self._ensure_ready()
        return getattr(self, attribute)

    # ------------------------------------------------------------- properties
    @property
    def name(self) -> str:
        """``text:stdlib-3.X`` for the default corpus, else ``text:<first file>[+N]``."""
        return self._get("_name")

    @property
    def source(self) -> str:
        """What the documents are: the files, or the Python version and library path."""
        return self._get("_source")

    @property
    def skipped_files(self) -> list[str]:
        """Standard-library files met in the seeded order and left out (not UTF-8)."""
        return list(self._get("_skipped"))

    @property
    def tokenizer(self) -> Any:
        """The Hugging Face tokenizer, or ``None`` for the byte-level one."""
        tokenizer = self._get("_tokenizer")
        return None if isinstance(tokenizer, ByteTokenizer) else tokenizer

    @property
    def text_tokenizer(self) -> Any:
        """The tokenizer in use, ``ByteTokenizer`` included (``encode`` / ``decode``)."""
        return self._get("_tokenizer")

    @property
    def tokenizer_fingerprint(self) -> str:
        """Hex sha256 identifying the tokenizer (:func:`tokenizer_identity`)."""
        return self._get("_identity")

    @property
    def vocab_size(self) -> int:
        """Ids the model must cover: 258 byte-level, ``len(tokenizer)`` otherwise."""
        return self._get("_vocab_size")

    @property
    def num_classes(self) -> int:
        return self.vocab_size

    @property
    def eos_token_id(self) -> int:
        return self._get("_eos")

    @property
    def pad_token_id(self) -> int:
        return self._get("_pad")

    @property
    def input_shape(self) -> tuple[int]:
        return (self.block_size,)

    @property
    def split(self) -> Split:
        """Sorted document ids (positions in the corpus before selection) of each split."""
        return self._get("_split")

    @property
    def split_sizes(self) -> dict[str, int]:
        """Blocks per split."""
        return dict(self._get("_sizes"))

    @property
    def num_train(self) -> int:
        return self.split_sizes["train"]

    @property
    def num_tokens(self) -> dict[str, int]:
        """Label positions that are not -100 per split (tokens and end-of-document ids);
        the shifted loss sees one fewer per block."""
        return dict(self._get("_num_tokens"))

    @property
    def document_bytes(self) -> dict[str, int]:
        """UTF-8 bytes of the documents of each split."""
        return dict(self._get("_document_bytes"))

    @property
    def fingerprint(self) -> str:
        """Hex sha256 over the tokenizer identity, ``block_size`` and the packed splits."""
        return self._get("_fingerprint")

    # ---------------------------------------------------------------- datasets
    def _bounds(self, split: str) -> tuple[int, int]:
        sizes = self.split_sizes
        if split == "all":
            return 0, sum(sizes.values())
        if split not in SPLITS:
            raise ValueError(f"split={split!r}; allowed: 'all', {', '.join(map(repr, SPLITS))}")
        start = sum(sizes[s] for s in SPLITS[: SPLITS.index(split)])
        return start, start + sizes[split]

    def split_dataset(self, split: str) -> PackedBlocks:
        """The blocks of ``"train"``, ``"val"``, ``"test"`` or ``"all"``."""
        start, stop = self._bounds(split)
        return PackedBlocks(self._blocks, self._lengths, start, stop)

    def full_dataset(self) -> PackedBlocks:
        """Every block, in index order: train, then val, then test (for caches)."""
        return self.split_dataset("all")

    def _loader(self, dataset: PackedBlocks, shuffle: bool = False) -> DataLoader:
        sampler = EpochShuffleSampler(len(dataset), self.shuffle_seed) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.split_dataset("train"), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.split_dataset("val"))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.split_dataset("test"))

    def predict_dataloader(self, split: str = "all") -> DataLoader:
        """Unshuffled loader over ``split`` (``"all"``: every index)."""
        return self._loader(self.split_dataset(split))
