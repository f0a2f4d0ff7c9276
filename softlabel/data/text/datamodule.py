"""``TextDataModule``: a text corpus read, selected, split by document, tokenised and packed
into blocks for causal language modelling, with its loaders and fingerprint."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from softlabel.data.datasets import epoch_loader
from softlabel.data.splits import Split, check_fraction
from softlabel.data.text.packing import PackedBlocks, pack_documents
from softlabel.data.text.readers import expand_files, read_documents
from softlabel.data.text.selection import SPLITS, select_documents, split_documents
from softlabel.data.text.stdlib import stdlib_document, stdlib_sources
from softlabel.data.tokenizers import (
    ByteTokenizer,
    encode_documents,
    load_tokenizer,
    token_dtype,
    tokenizer_identity,
    tokenizer_vocab_size,
)

__all__ = ["TextDataModule"]


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
                document = stdlib_document(paths[i])
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
    def tokenizer_path(self) -> str | None:
        """The absolute path the tokenizer was given as (``tokenizer``), or None (byte-level,
        or a tokenizer object)."""
        spec = self._tokenizer_spec
        if isinstance(spec, str | os.PathLike):
            return os.path.abspath(os.path.expanduser(os.fspath(spec)))
        return None

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
        return epoch_loader(
            dataset, self.batch_size, self.num_workers, self.shuffle_seed, shuffle=shuffle
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
