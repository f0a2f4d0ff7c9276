"""Cross-tokenizer alignment on hand-made texts: a word split differently by the two
tokenizers, whitespace, multi-byte UTF-8, a token spanning two of the other's, ends of
documents and blocks cut inside a character; each against the positions written out by
hand or against a reference that compares the text each side has read; the tokens' bytes,
the vocabulary map and the refusals. The tokenizers are built here (no download)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")

from softlabel.data import ByteTokenizer  # noqa: E402
from softlabel.data.text.alignment import (  # noqa: E402
    TokenAligner,
    byte_offsets,
    encode_with_offsets,
    vocabulary_map,
)
from softlabel.data.token_bytes import spells_text, token_bytes  # noqa: E402

BYTES = ByteTokenizer()
SEP = b"\x00<eod>\x00"  # what an end of document reads as in the reference


def bpe(merges: list[str], eos: str = "<eos>"):
    """A byte-level BPE (GPT-2's form) with exactly these merges, in this order."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {eos: 0}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    pairs = []
    for merge in merges:
        left, right = merge.split(" ")
        pairs.append((left, right))
        vocab.setdefault(left + right, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos)


def metaspace():
    """A SentencePiece-style tokenizer ("▁" for a space, a prefix space on the first word)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    chars = sorted(set("abcdefghijklmnopqrstuvwxyz.,!'\u2581"))
    vocab = {"<eos>": 0, "<unk>": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    vocab["\u2581h"] = len(vocab)
    vocab["\u2581he"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("\u2581", "h"), ("\u2581h", "e")]))
    tok.model.unk_token = "<unk>"
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>"
    )


TEACHER = ["h e", "he l", "l o", "Ġ w", "Ġw o", "r l", "rl d", "Ã ©"]  # hel|lo|Ġwo|rld, é
STUDENT = ["h e", "l l", "ll o"]  # he|llo


def encode(tokenizer, texts: list[str]) -> np.ndarray:
    """The documents' ids joined by the tokenizer's end of document, as the data packs them."""
    ids: list[int] = []
    for k, text in enumerate(texts):
        if k:
            ids.append(tokenizer.eos_token_id)
        if isinstance(tokenizer, ByteTokenizer):
            ids.extend(tokenizer.encode(text).tolist())
        else:
            ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
    return np.asarray(ids, dtype=np.int64)


def align_one(student, teacher, ids: np.ndarray, width: int | None = None):
    width = width or len(ids) + 3
    blocks = np.full((1, width), 257 if isinstance(student, ByteTokenizer) else 0)
    blocks[0, : len(ids)] = ids
    result = TokenAligner(student, teacher).align(blocks, np.asarray([len(ids)]))
    return result, result.positions[0, : len(ids)].tolist()


def read_bytes(tokenizer, ids) -> bytes:
    """The text ``ids`` have read, end of document as ``SEP``: the reference decodes each run
    between ends of document as a whole (an incomplete last character reads as U+FFFD)."""
    parts, run = [], []
    for i in [*map(int, ids), None]:
        if i is not None and i != tokenizer.eos_token_id:
            run.append(i)
            continue
        if isinstance(tokenizer, ByteTokenizer):
            parts.append(bytes(run))
        else:
            parts.append(tokenizer.decode(run).encode("utf-8"))
        parts.append(SEP if i is not None else b"")
        run = []
    return b"".join(parts)


def reference_positions(student, teacher, student_ids, teacher_ids, head: int = 0) -> list[int]:
    """Student position i <-> the last teacher position j (with a next token) that has read
    exactly the same text (after the ``head`` bytes the teacher never sees). A text read up
    to inside a character (it decodes to U+FFFD at its end) matches nothing."""
    partial = "\ufffd".encode()
    t_read = [read_bytes(teacher, teacher_ids[: j + 1]) for j in range(len(teacher_ids) - 1)]
    out = []
    for i in range(len(student_ids)):
        s_read = read_bytes(student, student_ids[: i + 1])[head:]
        matches = [j for j, t in enumerate(t_read) if t == s_read and not t.endswith(partial)]
        out.append(matches[-1] if matches and i < len(student_ids) - 1 else -1)
    return out


# ------------------------------------------------------------------------------- by hand
def test_byte_student_and_a_bpe_teacher_by_hand():
    """'hello world': the teacher reads hel|lo|Ġwo|rld, then the end of document. The byte
    student's positions after 'hel', 'hello', 'hello wo' and 'hello world' are aligned to
    the teacher's positions 0..3; positions inside a teacher token are not."""
    teacher = bpe(TEACHER)
    ids = encode(BYTES, ["hello world", ""])  # the end of document at byte 11
    result, positions = align_one(BYTES, teacher, ids)
    assert [teacher.decode([i]) for i in result.block(0)] == ["hel", "lo", " wo", "rld", "<eos>"]
    assert positions == [-1, -1, 0, -1, 1, -1, -1, 2, -1, -1, 3, -1]
    assert (result.scored, result.aligned) == (11, 4)
    assert result.share == pytest.approx(4 / 11)


def test_a_word_split_differently_by_the_two_tokenizers():
    """Student he|llo, teacher hel|lo: only the word's end (and the space) is common."""
    student, teacher = bpe(STUDENT), bpe(TEACHER)
    ids = encode(student, ["hello hello", ""])
    assert [student.decode([i]) for i in ids[:5]] == ["he", "llo", " ", "he", "llo"]
    result, positions = align_one(student, teacher, ids)
    assert [teacher.decode([i]) for i in result.block(0)] == [
        "hel",
        "lo",
        " ",
        "hel",
        "lo",
        "<eos>",
    ]
    assert positions == [-1, 1, 2, -1, 4, -1]


def test_a_student_token_spanning_two_teacher_tokens():
    """The student reads 'hello' as one token, the teacher as hel|lo: the student position
    before it and after it are aligned, the teacher's position after 'hel' has no student
    counterpart (it is simply not used)."""
    student = bpe(["h e", "he l", "hel l", "hell o"])
    teacher = bpe(TEACHER)
    ids = encode(student, ["hello.hello", ""])
    assert [student.decode([i]) for i in ids[:3]] == ["hello", ".", "hello"]
    result, positions = align_one(student, teacher, ids)
    # teacher: hel(0) lo(1) .(2) hel(3) lo(4) <eos>(5)
    assert positions == [1, 2, 4, -1]


# ------------------------------------------------------------------------ against reference
@pytest.mark.parametrize(
    "texts",
    [
        ["hello world", "a  b\n\tc  \n\n"],  # runs of spaces, tabs and newlines
        ["caf\u00e9 \u00e9t\u00e9, na\u00efve", "\u20ac 5"],  # 2- and 3-byte characters
        ["smile \U0001f600 ok", "\U0001f600\U0001f600"],  # 4 bytes, split by the teacher
        ["", "hello", "", "world"],  # empty documents: ends of document side by side
    ],
)
@pytest.mark.parametrize("student_kind", ["bytes", "bpe"])
def test_positions_equal_the_reference(texts, student_kind):
    student = BYTES if student_kind == "bytes" else bpe(STUDENT)
    teacher = bpe(TEACHER)
    ids = encode(student, texts)
    result, positions = align_one(student, teacher, ids)
    assert positions == reference_positions(student, teacher, ids, result.block(0))
    assert result.aligned == sum(p >= 0 for p in positions) > 0


def test_the_teacher_runs_on_its_own_ids_of_each_piece():
    """Between two ends of document the teacher reads the same ids as on the whole text."""
    teacher = bpe(TEACHER)
    ids = encode(BYTES, ["hello world", "caf\u00e9"])
    result, _ = align_one(BYTES, teacher, ids)
    own = teacher("hello world", add_special_tokens=False)["input_ids"]
    tail = teacher("caf\u00e9", add_special_tokens=False)["input_ids"]
    assert result.block(0).tolist() == [*own, teacher.eos_token_id, *tail]


def test_a_block_cut_inside_a_character():
    """A byte-level block that starts with the last byte of 'é' and ends with the first
    byte of '€': the teacher reads the whole characters between; the stray bytes have no
    counterpart."""
    teacher = bpe(TEACHER)
    data = "\u00e9hello \u20ac".encode()[1:-2]  # b'\xa9hello \xe2'
    ids = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
    result, positions = align_one(BYTES, teacher, ids)
    assert teacher.decode(result.block(0).tolist()) == "hello "
    assert positions == reference_positions(BYTES, teacher, ids, result.block(0), head=1)
    assert positions[0] == -1 and positions[-2:] == [-1, -1]


def test_byte_offsets_and_offsets_of_both_tokenizers():
    assert byte_offsets("a\u00e9\u20ac\U0001f600").tolist() == [0, 1, 3, 6, 10]
    ((ids, start, end),) = encode_with_offsets(BYTES, ["\u00e9a"])
    assert ids.tolist() == [0xC3, 0xA9, 0x61] and start.tolist() == [0, 1, 2]
    assert end.tolist() == [1, 2, 3]
    ((ids, start, end),) = encode_with_offsets(bpe(TEACHER), ["h\u00e9llo"])
    assert list(zip(start.tolist(), end.tolist(), strict=True))[:2] == [(0, 1), (1, 3)]


# ------------------------------------------------------------------------ bytes and maps
def test_token_bytes_of_each_kind():
    table = token_bytes(BYTES)
    assert table[32] == b" " and table[256] is None and table[257] is None
    teacher = bpe(TEACHER)
    spelled = token_bytes(teacher)
    assert spelled[teacher.convert_tokens_to_ids("Ġwo")] == b" wo"
    assert spelled[teacher.convert_tokens_to_ids("Ã©")] == "\u00e9".encode()
    assert spelled[teacher.eos_token_id] is None
    assert spells_text(BYTES) and spells_text(teacher)
    sentencepiece = metaspace()
    assert token_bytes(sentencepiece)[sentencepiece.convert_tokens_to_ids("\u2581he")] == b" he"
    assert not spells_text(sentencepiece)  # the prefix space of the first word


def test_vocabulary_map_matches_the_bytes_of_each_token():
    teacher = bpe(TEACHER)
    pairs = {tuple(p) for p in vocabulary_map(BYTES, teacher).tolist()}
    assert (32, teacher.convert_tokens_to_ids("Ġ")) in pairs  # a byte and the BPE's "Ġ"
    assert (ord("h"), teacher.convert_tokens_to_ids("h")) in pairs
    assert (256, teacher.eos_token_id) in pairs  # end of document with end of document
    assert len(pairs) == 257  # every byte is a token of a byte-level BPE
    student = bpe(STUDENT)
    between = {tuple(p) for p in vocabulary_map(student, teacher).tolist()}
    assert (student.convert_tokens_to_ids("he"), teacher.convert_tokens_to_ids("he")) in between
    assert student.convert_tokens_to_ids("llo") not in {s for s, _ in between}
    sentencepiece, spaced = metaspace(), bpe(["h e", "Ġ he"])
    across = {tuple(p) for p in vocabulary_map(sentencepiece, spaced).tolist()}
    pair = (sentencepiece.convert_tokens_to_ids("\u2581he"), spaced.convert_tokens_to_ids("Ġhe"))
    assert pair in across  # "▁he" and "Ġhe" are both b" he"


# -------------------------------------------------------------------------------- refusals
def test_a_teacher_tokenizer_without_offsets_is_refused():
    class SlowTokenizer:
        is_fast = False
        eos_token_id = 0

    with pytest.raises(ValueError, match="teacher.tokenizer: SlowTokenizer cannot give character"):
        TokenAligner(BYTES, SlowTokenizer())


def test_a_student_tokenizer_that_does_not_spell_its_text_is_refused():
    with pytest.raises(ValueError, match="data.tokenizer: the ids of .* do not spell back"):
        TokenAligner(metaspace(), bpe(TEACHER))
