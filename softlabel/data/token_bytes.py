"""The UTF-8 bytes each token id stands for: what bits per byte, cross-tokenizer alignment and
the hybrid ULD's vocabulary map are computed from.

- the byte-level tokenizer: id ``b`` < 256 is the byte ``b``; end of document and padding
  stand for no text (``None``);
- a Hugging Face tokenizer whose decoder is byte-level (GPT-2, SmolLM2, Llama 3, Qwen: the
  token strings spell bytes through GPT-2's printable alphabet, e.g. ``"Ġ"`` for a space, Radford
  et al. 2019): each character of the token string is one byte;
- a SentencePiece-style one (``"▁"`` for a space, ``<0x0A>`` byte-fallback tokens): those
  replaced, the rest UTF-8;
- any other: the token string as UTF-8 (as GOLD matches vocabularies), not exact.

Special tokens (end of document, padding, chat markers) stand for no text. Whether the table
spells the text back exactly is checked on a probe text (:func:`spells_text`): the
SentencePiece prefix space of a document's first token, for instance, does not.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from softlabel.data.tokenizers import ByteTokenizer, tokenizer_vocab_size

__all__ = ["PROBE_TEXT", "byte_lengths", "spells_text", "token_bytes"]

#: a text with what tokenizers treat differently: leading, repeated and trailing spaces,
#: tabs and newlines, punctuation, digits, 2-, 3- and 4-byte UTF-8 characters
PROBE_TEXT = (
    "Hello, world!\n\tdef f(x):  return 'h\u00e9llo \u20ac 42 \U0001f600'  # done\n\n  end "
)
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's reversible map from characters to bytes: the printable bytes ``!``..``~``,
    ``¡``..``¬`` and ``®``..``ÿ`` are their own character, the other 68 bytes are the
    characters 256, 257, ... in byte order."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    keep = set(printable)
    alphabet, extra = {}, 0
    for byte in range(256):
        if byte in keep:
            alphabet[chr(byte)] = byte
        else:
            alphabet[chr(256 + extra)] = byte
            extra += 1
    return alphabet


def _decoder_kind(tokenizer: Any) -> str:
    """``byte_level``, ``sentencepiece`` or ``plain``, from the ``tokenizers`` decoder."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return "plain"
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    kinds = {decoder.get("type")} | {d.get("type") for d in decoder.get("decoders") or []}
    if "ByteLevel" in kinds:
        return "byte_level"
    if kinds & {"Metaspace", "ByteFallback"}:
        return "sentencepiece"
    if any(d.get("type") == "Replace" for d in decoder.get("decoders") or []):
        return "sentencepiece"
    return "plain"


def _special_ids(tokenizer: Any) -> set[int]:
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", []) or []}
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids |= {int(i) for i, token in added.items() if getattr(token, "special", False)}
    return ids


def token_bytes(tokenizer: Any) -> list[bytes | None]:
    """The bytes of every id ``0 .. len(tokenizer) - 1`` (``None``: special, no text)."""
    if isinstance(tokenizer, ByteTokenizer):
        return [bytes([i]) for i in range(256)] + [None] * (tokenizer.vocab_size - 256)
    size = tokenizer_vocab_size(tokenizer)
    strings = tokenizer.convert_ids_to_tokens(list(range(size)))
    special = _special_ids(tokenizer)
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    kind = _decoder_kind(tokenizer)
    alphabet = _byte_level_alphabet() if kind == "byte_level" else {}
    table: list[bytes | None] = []
    for token_id, string in enumerate(strings):
        if token_id in special or string is None:
            table.append(None)
        elif token_id in added:  # an added token is matched in the text as written
            table.append(str(getattr(added[token_id], "content", string)).encode("utf-8"))
        elif kind == "byte_level":
            try:
                table.append(bytes(alphabet[c] for c in string))
            except KeyError:  # a character outside the alphabet: not a byte-level token
                table.append(None)
        elif kind == "sentencepiece":
            match = _BYTE_FALLBACK.match(string)
            if match:
                table.append(bytes([int(match.group(1), 16)]))
            else:
                table.append(string.replace("\u2581", " ").encode("utf-8"))
        else:
            table.append(string.encode("utf-8"))
    return table


def byte_lengths(tokenizer: Any) -> np.ndarray:
    """(V,) int64: the UTF-8 bytes each id stands for (0 for special ids)."""
    return np.asarray([0 if b is None else len(b) for b in token_bytes(tokenizer)], np.int64)


def spells_text(tokenizer: Any, table: list[bytes | None] | None = None) -> bool:
    """Whether the ids of :data:`PROBE_TEXT` spell its bytes exactly through ``table`` (by
    default :func:`token_bytes`): True for the byte-level tokenizer and byte-level BPE."""
    if isinstance(tokenizer, ByteTokenizer):
        return True
    table = token_bytes(tokenizer) if table is None else table
    ids = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    parts = [table[i] for i in ids]
    if any(part is None for part in parts):
        return False
    return b"".join(parts) == PROBE_TEXT.encode("utf-8")  # type: ignore[arg-type]
