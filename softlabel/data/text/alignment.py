"""Two tokenizations of the same blocks of text, aligned position by position, for a teacher
with another tokenizer than the student's (cross-tokenizer distillation).

Each block of the student's tokens is spelled back into its text (the UTF-8 bytes of its
tokens, :mod:`softlabel.data.token_bytes`); the end-of-document ids split it into pieces of
documents. The teacher tokenizes each piece (a piece cut inside a multi-byte character at
the block's edges starts at the first whole character and ends at the last), with the
character offsets of every token (a fast tokenizer's offset mapping, or the byte-level
tokenizer's own), and its end-of-document id stands where the student's does. Offsets are
counted in bytes of the block, an end of document counting as one.

A causal LM's logits at position ``i`` predict token ``i + 1``. Student position ``i`` and
teacher position ``j`` are aligned when both have read exactly the same text and are about
to predict the text that follows it: student token ``i`` ends where student token ``i + 1``
begins, teacher token ``j`` ends where teacher token ``j + 1`` begins, and it is the same
byte. There the teacher's next-token distribution (over its own vocabulary) applies to the
student's position. Positions inside a teacher token (the student predicts a byte the
teacher already read), inside a multi-byte character one tokenizer splits, or beside text
the teacher's offsets skip have no clean counterpart: they are counted, and the loss gives
them no teacher term.

GOLD (TRL's cross-tokenizer trainer) aligns the same way, by byte offsets, and merges the
probabilities of the tokens between two common boundaries; here only the common boundaries
carry the teacher.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from softlabel.data.token_bytes import spells_text, token_bytes
from softlabel.data.tokenizers import ByteTokenizer, tokenizer_identity, tokenizer_vocab_size

__all__ = [
    "BlockAlignment",
    "TokenAligner",
    "byte_offsets",
    "encode_with_offsets",
    "vocabulary_map",
]

#: the most bytes a UTF-8 character takes
_MAX_CHAR = 4


def byte_offsets(text: str) -> np.ndarray:
    """(len(text) + 1,) int64: the UTF-8 byte offset of each character boundary."""
    points = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    sizes = 1 + (points >= 0x80) + (points >= 0x800) + (points >= 0x10000)
    return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])


def _check_offsets(tokenizer: Any, setting: str) -> None:
    if isinstance(tokenizer, ByteTokenizer):
        return
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"{setting}: {type(tokenizer).__name__} cannot give character offsets (a slow, "
            "Python tokenizer): the positions of two tokenizers are aligned by the text each "
            "token covers. Save the tokenizer with its tokenizer.json (a fast tokenizer) and "
            "give that directory"
        )


def encode_with_offsets(
    tokenizer: Any, texts: Sequence[str], setting: str = "teacher.tokenizer"
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per text: ``(ids, start, end)``, each token's byte span in the text's UTF-8.

    Byte-level tokenizer: one byte per id. Hugging Face: a fast tokenizer's offset mapping
    (characters, converted to bytes), without special tokens; a slow one is refused.
    """
    _check_offsets(tokenizer, setting)
    if isinstance(tokenizer, ByteTokenizer):
        out = []
        for text in texts:
            ids = tokenizer.encode(text).astype(np.int64)
            start = np.arange(len(ids), dtype=np.int64)
            out.append((ids, start, start + 1))
        return out
    if not texts:
        return []
    encoded = tokenizer(
        list(texts),
        add_special_tokens=False,
        return_offsets_mapping=True,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,
    )
    out = []
    for text, ids, offsets in zip(
        texts, encoded["input_ids"], encoded["offset_mapping"], strict=True
    ):
        chars = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        to_bytes = byte_offsets(text)
        out.append((np.asarray(ids, dtype=np.int64), to_bytes[chars[:, 0]], to_bytes[chars[:, 1]]))
    return out


def _whole_characters(data: bytes) -> tuple[int, int]:
    """``(head, tail)``: bytes to drop at the start (continuation bytes of a character cut by
    the block's start) and at the end (an incomplete last character) so that ``data`` decodes."""
    head = 0
    while head < min(len(data), _MAX_CHAR - 1) and data[head] & 0xC0 == 0x80:
        head += 1
    tail = 0
    for back in range(1, min(_MAX_CHAR, len(data) - head) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # a continuation byte: look further back for its lead byte
            continue
        need = 1 if byte < 0x80 else 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4
        tail = back if need > back else 0
        break
    return head, tail


def vocabulary_map(student: Any, teacher: Any) -> np.ndarray:
    """(M, 2) int64 pairs (student id, teacher id) of the tokens both vocabularies hold: the
    same bytes (so a byte-level BPE ``"Ġthe"`` matches a SentencePiece ``"▁the"`` and the byte
    tokenizer's 32 matches a BPE's ``"Ġ"``), and end of document with end of document. Each
    id at most once (the lowest teacher id of a string)."""
    teacher_ids: dict[bytes, int] = {}
    for token_id, spelled in enumerate(token_bytes(teacher)):
        if spelled is not None and spelled not in teacher_ids:
            teacher_ids[spelled] = token_id
    pairs, seen = [], set()
    for token_id, spelled in enumerate(token_bytes(student)):
        match = teacher_ids.get(spelled) if spelled is not None else None
        if match is not None and match not in seen:
            pairs.append((token_id, match))
            seen.add(match)
    eos_s, eos_t = int(student.eos_token_id), int(teacher.eos_token_id)
    if eos_t not in seen and all(s != eos_s for s, _ in pairs):
        pairs.append((eos_s, eos_t))
    return np.asarray(sorted(pairs), dtype=np.int64).reshape(-1, 2)


@dataclass(frozen=True)
class BlockAlignment:
    """The teacher's tokens of every block and where its rows go.

    ``teacher_ids[offsets[b]:offsets[b + 1]]`` are block ``b``'s teacher ids;
    ``positions[b, i]`` is the teacher position whose logits apply to student position ``i``
    (it predicts student token ``i + 1``), -1 where there is none. ``scored``: student
    positions with a next token; ``aligned``: those with a teacher position.
    """

    teacher_ids: np.ndarray
    offsets: np.ndarray
    positions: np.ndarray
    scored: int
    aligned: int

    @property
    def share(self) -> float:
        """Aligned positions over scored positions."""
        return self.aligned / self.scored if self.scored else 0.0

    @property
    def longest(self) -> int:
        """The most teacher tokens of one block."""
        return int(np.diff(self.offsets).max(initial=0))

    def block(self, b: int) -> np.ndarray:
        return self.teacher_ids[self.offsets[b] : self.offsets[b + 1]]


class TokenAligner:
    """Aligns blocks of ``student`` token ids (the data's tokenizer) to ``teacher``'s tokens of
    the same text; ``student_setting`` and ``teacher_setting`` name the two in errors.

    The student's ids must spell their text exactly (byte-level, or a byte-level BPE: see
    :func:`softlabel.data.token_bytes.spells_text`); the teacher must give offsets.
    """

    def __init__(
        self,
        student: Any,
        teacher: Any,
        *,
        student_setting: str = "data.tokenizer",
        teacher_setting: str = "teacher.tokenizer",
    ) -> None:
        _check_offsets(teacher, teacher_setting)
        table = token_bytes(student)
        if not spells_text(student, table):
            raise ValueError(
                f"{student_setting}: the ids of {type(student).__name__} do not spell back the "
                "bytes of the text they encode (its decoder adds or drops characters, e.g. a "
                "SentencePiece prefix space), so the student's positions cannot be aligned to "
                "a teacher with another tokenizer; use a byte-level (null) or byte-level BPE "
                "tokenizer for the data"
            )
        self.student, self.teacher = student, teacher
        self.teacher_setting = teacher_setting
        self.student_eos = int(student.eos_token_id)
        self.teacher_eos = int(teacher.eos_token_id)
        self.teacher_vocab = tokenizer_vocab_size(teacher)
        self._table = table
        self._lengths = np.asarray([0 if b is None else len(b) for b in table], np.int64)

    @property
    def identities(self) -> tuple[str, str]:
        """The student's and the teacher's tokenizer fingerprints."""
        return tokenizer_identity(self.student), tokenizer_identity(self.teacher)

    def _spell(self, ids: np.ndarray) -> bytes:
        if isinstance(self.student, ByteTokenizer):
            return ids.astype(np.uint8).tobytes()
        return b"".join(self._table[int(i)] for i in ids)  # type: ignore[misc]

    def _pieces(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
        """Student token spans ``(start, end)`` in block bytes and the pieces of text between
        ends of document: ``(first token, stop token)`` pairs."""
        separator = self._lengths[ids] == 0  # end of document (and any special id)
        size = np.where(separator, 1, self._lengths[ids])
        end = np.cumsum(size)
        start = end - size
        cuts = np.flatnonzero(separator)
        bounds = np.concatenate([[-1], cuts, [len(ids)]])
        pieces = [(int(a) + 1, int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        return start, end, pieces

    def align(self, blocks: np.ndarray, lengths: np.ndarray) -> BlockAlignment:
        """The alignment of ``blocks`` (N, L) of which ``lengths[b]`` tokens are real."""
        blocks = np.asarray(blocks)
        lengths = np.asarray(lengths, dtype=np.int64)
        n_blocks, width = blocks.shape
        plans, texts = [], []
        for b in range(n_blocks):
            ids = blocks[b, : lengths[b]].astype(np.int64)
            start, end, pieces = self._pieces(ids)
            spans: list[tuple[int, int, int] | tuple[int, None, None]] = []
            for first, stop in pieces:
                # the end of document before this piece (none before the first), in bytes
                separator = int(start[first - 1]) if first else -1
                if stop <= first:
                    spans.append((separator, None, None))
                    continue
                data = self._spell(ids[first:stop])
                head, tail = _whole_characters(data)
                texts.append(data[head : len(data) - tail].decode("utf-8"))
                spans.append((separator, int(start[first]) + head, len(texts) - 1))
            plans.append((start, end, spans))
        encoded = encode_with_offsets(self.teacher, texts, self.teacher_setting)
        positions = np.full((n_blocks, width), -1, dtype=np.int32)
        all_ids, offsets = [], [0]
        scored = aligned = 0
        for b, (start, end, spans) in enumerate(plans):
            t_ids, t_start, t_end = [], [], []
            for separator, base, text_index in spans:
                if separator >= 0:  # the student's end of document: the teacher's, same place
                    t_ids.append(np.asarray([self.teacher_eos]))
                    t_start.append(np.asarray([separator]))
                    t_end.append(np.asarray([separator + 1]))
                if text_index is None:
                    continue
                ids_k, s_k, e_k = encoded[text_index]
                t_ids.append(ids_k)
                t_start.append(s_k + base)
                t_end.append(e_k + base)
            ids_t = np.concatenate(t_ids) if t_ids else np.zeros(0, np.int64)
            s_t = np.concatenate(t_start) if t_start else np.zeros(0, np.int64)
            e_t = np.concatenate(t_end) if t_end else np.zeros(0, np.int64)
            all_ids.append(ids_t)
            offsets.append(offsets[-1] + len(ids_t))
            n = len(start)
            scored += max(n - 1, 0)
            if n < 2 or len(ids_t) < 2:
                continue
            # teacher position j: read up to e_t[j], predicts the token starting at s_t[j + 1]
            clean = e_t[:-1] == s_t[1:]
            boundary_t = e_t[:-1][clean]
            index_t = np.flatnonzero(clean)
            if not len(index_t):
                continue
            # student position i: read up to end[i], predicts the token starting at start[i + 1]
            boundary_s = end[:-1]
            hit = np.searchsorted(boundary_t, boundary_s, side="right") - 1
            ok = (hit >= 0) & (boundary_t[np.clip(hit, 0, None)] == boundary_s)
            ok &= end[:-1] == start[1:]
            rows = np.flatnonzero(ok)
            positions[b, rows] = index_t[hit[rows]]
            aligned += len(rows)
        teacher_ids = np.concatenate(all_ids) if all_ids else np.zeros(0, np.int64)
        return BlockAlignment(
            teacher_ids=teacher_ids.astype(np.int64),
            offsets=np.asarray(offsets, dtype=np.int64),
            positions=positions,
            scored=scored,
            aligned=aligned,
        )
