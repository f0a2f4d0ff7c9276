"""Tokenizers for the text data: the built-in byte-level one, or a local Hugging Face one.

The byte-level tokenizer needs nothing: ids 0..255 are the bytes of the UTF-8 text, 256
ends a document, 257 pads (vocabulary 258), as in byte-level language models (ByT5,
Xue et al. 2022, without its offset of 3 special ids). A Hugging Face tokenizer is read
from a local directory or GGUF file only (``local_files_only=True``,
``trust_remote_code=False``); ``transformers`` is imported on that path alone.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from softlabel._hf_files import (
    LOCAL,
    check_no_custom_code,
    gguf_architecture,
    gguf_location,
    is_gguf,
)
from softlabel._io import atomic_write_json

__all__ = [
    "BYTE_TOKENIZER_FILE",
    "ByteTokenizer",
    "encode_documents",
    "load_tokenizer",
    "token_dtype",
    "tokenizer_identity",
]

#: the file ``ByteTokenizer.save_pretrained`` writes into its directory
BYTE_TOKENIZER_FILE = "byte_tokenizer.json"
#: documents per call of a Hugging Face tokenizer
ENCODE_BATCH = 1024


class ByteTokenizer:
    """Byte-level tokenizer: ``encode(text)`` is the UTF-8 bytes as ids 0..255.

    ``eos_token_id = 256`` (end of document), ``pad_token_id = 257``, ``vocab_size = 258``.
    """

    vocab_size = 258
    eos_token_id = 256
    pad_token_id = 257
    name = "byte-level"

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str | bytes) -> np.ndarray:
        """The UTF-8 bytes of ``text`` as a uint16 array (no end-of-document id)."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return np.frombuffer(data, dtype=np.uint8).astype(np.uint16)

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; invalid UTF-8 (e.g. sampled bytes) becomes U+FFFD.

        End-of-document and padding ids are dropped, or written ``<|eod|>`` / ``<|pad|>``
        with ``skip_special_tokens=False``; the label value -100 is always dropped.
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        ids = ids[ids != -100]
        bad = (ids < 0) | (ids >= self.vocab_size)
        if bad.any():
            raise ValueError(
                f"ids hold {int(ids[bad][0])}; allowed: 0..{self.vocab_size - 1} (or -100)"
            )
        if skip_special_tokens:
            return ids[ids < 256].astype(np.uint8).tobytes().decode("utf-8", errors="replace")
        parts, start = [], 0
        for position in np.flatnonzero(ids >= 256):
            parts.append(ids[start:position].astype(np.uint8).tobytes().decode("utf-8", "replace"))
            parts.append("<|eod|>" if ids[position] == self.eos_token_id else "<|pad|>")
            start = position + 1
        parts.append(ids[start:].astype(np.uint8).tobytes().decode("utf-8", errors="replace"))
        return "".join(parts)

    def config(self) -> dict[str, Any]:
        """What identifies this tokenizer (written by ``save_pretrained``)."""
        return {
            "tokenizer_class": "softlabel.data.ByteTokenizer",
            "encoding": "utf-8",
            "vocab_size": self.vocab_size,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
        }

    def save_pretrained(self, directory: str | os.PathLike) -> tuple[str]:
        """Write ``byte_tokenizer.json`` into ``directory`` (atomically); a directory holding
        it can be given back as ``tokenizer=DIR``."""
        path = atomic_write_json(Path(directory) / BYTE_TOKENIZER_FILE, self.config())
        return (str(path),)

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, setting: str = "data.tokenizer"
    ) -> ByteTokenizer:
        """Read a directory written by ``save_pretrained``, checking its description; errors
        name the file and ``setting``."""
        path = Path(directory) / BYTE_TOKENIZER_FILE
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(
                f"{setting}={os.fspath(directory)!r}: {path} is not valid JSON ({error}); "
                "it should hold the byte tokenizer's description: write it again with "
                "ByteTokenizer().save_pretrained(DIR), or set data.tokenizer=null "
                "(byte-level)"
            ) from error
        tokenizer = cls()
        if config != tokenizer.config():
            raise ValueError(
                f"{setting}={os.fspath(directory)!r}: {path} describes {config}; this "
                f"version's byte tokenizer is {tokenizer.config()}"
            )
        return tokenizer

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=258, eos_token_id=256, pad_token_id=257)"


def load_tokenizer(spec: Any, setting: str = "data.tokenizer") -> Any:
    """``None`` -> :class:`ByteTokenizer`; a directory or GGUF file -> its tokenizer; an
    object -> itself. Errors name ``setting``.

    A directory holding ``byte_tokenizer.json`` gives a ``ByteTokenizer``; any other is
    read with ``transformers.AutoTokenizer.from_pretrained(path, local_files_only=True,
    trust_remote_code=False)`` (a directory declaring ``auto_map`` is refused), and a
    ``.gguf`` file with ``gguf_file=`` (the ``gguf`` extra). A Hugging Face tokenizer
    must have an end-of-document token (``eos_token``): documents are packed together and
    the model has to see where one ends.
    """
    if spec is None or isinstance(spec, ByteTokenizer):
        return spec if spec is not None else ByteTokenizer()
    if isinstance(spec, str | os.PathLike):
        tokenizer = _load_local(spec, setting)
        if isinstance(tokenizer, ByteTokenizer):
            return tokenizer
        where = f"{setting}={str(spec)!r}"
    else:
        tokenizer, where = spec, f"{setting}={type(spec).__name__}"
    if getattr(tokenizer, "eos_token_id", None) is None:
        raise ValueError(
            f"{where} has no eos_token; documents are separated by it: set eos_token "
            "(e.g. tokenizer.eos_token = '</s>' with the token in its vocabulary, then "
            "save_pretrained)"
        )
    return tokenizer


def _load_local(spec: str | os.PathLike, setting: str) -> Any:
    """The tokenizer of a local directory or GGUF file (see :func:`load_tokenizer`)."""
    path = Path(spec).expanduser()
    given = f"{setting}={str(spec)!r}"
    if not path.exists():
        raise FileNotFoundError(
            f"{given}: no such directory or file ({path.absolute()}); give the directory of a "
            "saved Hugging Face tokenizer, a .gguf file, or null for byte-level"
        )
    gguf = is_gguf(path) and path.is_file()
    if not path.is_dir() and not gguf:
        raise NotADirectoryError(
            f"{given} is a file; give the directory holding it (or a .gguf file)"
        )
    if not gguf and (path / BYTE_TOKENIZER_FILE).is_file():
        return ByteTokenizer.from_pretrained(path, setting)
    try:
        from transformers import AutoTokenizer
    except ImportError as error:  # pragma: no cover - transformers is a dependency
        raise ImportError(f"{given} needs the transformers package") from error
    if gguf:
        directory, name = gguf_location(path, setting)
        gguf_architecture(path, setting)  # a readable GGUF header, or a clear error
        where, extra = directory, {"gguf_file": name}
    else:
        check_no_custom_code(path, setting, "tokenizer")
        where, extra = str(path), {}
    try:
        return AutoTokenizer.from_pretrained(where, **extra, **LOCAL)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(
            f"{given}: cannot load a Hugging Face tokenizer from {path}: "
            f"{type(error).__name__}: {error}"
        ) from error


def tokenizer_vocab_size(tokenizer: Any) -> int:
    """Ids a model must cover: ``len(tokenizer)`` (base vocabulary and added tokens)."""
    return len(tokenizer)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (``vocab_size <= 65536``), else int32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.int32)


def tokenizer_identity(tokenizer: Any) -> str:
    """Hex sha256 of what decides the ids: the byte tokenizer's description, or a Hugging
    Face tokenizer's class, full ``tokenizers`` serialisation (normaliser, pre-tokeniser,
    vocabulary, merges, added tokens) or else its sorted vocabulary, and its eos/pad ids."""
    if isinstance(tokenizer, ByteTokenizer):
        payload = json.dumps(tokenizer.config(), sort_keys=True)
    else:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            body = backend.to_str()
        else:
            body = json.dumps(sorted(tokenizer.get_vocab().items()))
        payload = json.dumps(
            {
                "class": type(tokenizer).__name__,
                "body": body,
                "len": len(tokenizer),
                "eos_token_id": tokenizer.eos_token_id,
                "pad_token_id": getattr(tokenizer, "pad_token_id", None),
            },
            sort_keys=True,
        )
    return hashlib.sha256(payload.encode()).hexdigest()


def encode_documents(documents: Sequence[bytes], tokenizer: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens, counts)``: the documents' ids one after another (no separators) and the
    number of ids of each document, in ``token_dtype(len(tokenizer))``.

    Byte-level: the joined bytes (``np.frombuffer``, one copy). Hugging Face: the decoded
    texts in batches of ``ENCODE_BATCH``, without special tokens (``add_special_tokens=False``).
    """
    vocab_size = tokenizer_vocab_size(tokenizer)
    dtype = token_dtype(vocab_size)
    if isinstance(tokenizer, ByteTokenizer):
        counts = np.fromiter((len(d) for d in documents), dtype=np.int64, count=len(documents))
        tokens = np.frombuffer(b"".join(documents), dtype=np.uint8).astype(dtype)
        return tokens, counts
    ids: list[list[int]] = []
    for start in range(0, len(documents), ENCODE_BATCH):
        texts = [d.decode("utf-8") for d in documents[start : start + ENCODE_BATCH]]
        encoded = tokenizer(
            texts,
            add_special_tokens=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )
        ids.extend(encoded["input_ids"])
    counts = np.fromiter((len(i) for i in ids), dtype=np.int64, count=len(ids))
    total = int(counts.sum())
    tokens = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=total)
    if total and (tokens.min() < 0 or tokens.max() >= vocab_size):
        bad = tokens[(tokens < 0) | (tokens >= vocab_size)][0]
        raise ValueError(
            f"the tokenizer produced id {int(bad)}, outside 0..{vocab_size - 1} (len(tokenizer))"
        )
    return tokens.astype(dtype), counts
