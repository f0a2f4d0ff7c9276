"""The text data for causal language models: reading, document split, byte and Hugging Face
tokenisation, packing into blocks, indices, fingerprints and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from softlabel.cache.guards import inputs_fingerprint
from softlabel.data import ByteTokenizer, TextDataModule
from softlabel.data.text import pack_documents, select_documents, stdlib_sources

EOS, PAD = 256, 257


def _jsonl(path, texts, field="text"):
    path.write_text("".join(json.dumps({field: t, "id": k}) + "\n" for k, t in enumerate(texts)))
    return path


def _words(n):
    """``n`` distinct documents of different lengths."""
    return [f"document {k}: " + "word " * (k % 7) for k in range(n)]


def _items(loader):
    """``{index: (input_ids, labels)}`` over every batch of ``loader``."""
    found = {}
    for input_ids, labels, index in loader:
        assert input_ids.dtype == labels.dtype == index.dtype == torch.int64
        for row, i in enumerate(index.tolist()):
            assert i not in found
            found[i] = (input_ids[row], labels[row])
    return found


# ------------------------------------------------------------------------------- packing
def test_pack_documents_by_hand():
    # "ab" + EOS + "c" + EOS = 5 tokens -> blocks of 4: [a b EOS c] [EOS PAD PAD PAD]
    tokens = np.array([97, 98, 99], dtype=np.uint16)
    blocks, lengths = pack_documents(tokens, np.array([2, 1]), 4, EOS, PAD)
    assert blocks.tolist() == [[97, 98, 256, 99], [256, 257, 257, 257]]
    assert lengths.tolist() == [4, 1]
    # an exact fit has no padded block
    blocks, lengths = pack_documents(tokens, np.array([3]), 4, EOS, PAD)
    assert blocks.tolist() == [[97, 98, 99, 256]] and lengths.tolist() == [4]
    # an empty document still ends with EOS
    blocks, lengths = pack_documents(tokens[:1], np.array([0, 1]), 2, EOS, PAD)
    assert blocks.tolist() == [[256, 97], [256, 257]] and lengths.tolist() == [2, 1]


def test_byte_blocks_of_three_documents(tmp_path):
    texts = {"a.txt": "ab", "b.txt": "c", "c.txt": "hello"}
    for name, text in texts.items():
        (tmp_path / name).write_text(text)
    expected = {  # document id (sorted file order) -> (input_ids, labels) of its blocks
        0: ([[97, 98, EOS, PAD]], [[97, 98, EOS, -100]]),
        1: ([[99, EOS, PAD, PAD]], [[99, EOS, -100, -100]]),
        2: (
            [[104, 101, 108, 108], [111, EOS, PAD, PAD]],
            [[104, 101, 108, 108], [111, EOS, -100, -100]],
        ),
    }
    dm = TextDataModule(
        files=str(tmp_path / "*.txt"), block_size=4, val_fraction=1 / 3, test_fraction=1 / 3
    )
    dm.setup("fit")
    assert (dm.vocab_size, dm.num_classes, dm.eos_token_id, dm.pad_token_id) == (258, 258, 256, 257)
    assert dm.task == "causal_lm" and dm.input_shape == (4,) and dm.tokenizer is None
    assert dm.name == "text:a.txt+2" and not dm.has_random_augmentation
    index = 0
    for split in ("train", "val", "test"):
        (doc,) = getattr(dm.split, split).tolist()
        ids, labels = expected[doc]
        assert dm.split_sizes[split] == len(ids)
        assert dm.num_tokens[split] == len(texts[sorted(texts)[doc]]) + 1
        for row in range(len(ids)):
            input_ids, label, i = dm.full_dataset()[index]
            assert input_ids.tolist() == ids[row] and label.tolist() == labels[row]
            assert i.ndim == 0 and int(i) == index
            index += 1
    assert index == len(dm.full_dataset())


def test_loaders_match_full_dataset(tmp_path):
    dm = TextDataModule(files=_jsonl(tmp_path / "d.jsonl", _words(30)), block_size=8, batch_size=5)
    dm.setup("fit")
    full = dm.full_dataset()
    train, val, test = (
        _items(dm.train_dataloader()),
        _items(dm.val_dataloader()),
        _items(dm.test_dataloader()),
    )
    sizes = dm.split_sizes
    assert sorted(train) == list(range(sizes["train"]))
    assert sorted(val) == list(range(sizes["train"], sizes["train"] + sizes["val"]))
    assert sorted(test) == list(range(sizes["train"] + sizes["val"], len(full)))
    for i, (input_ids, labels) in {**train, **val, **test}.items():
        ref_ids, ref_labels, ref_index = full[i]
        assert torch.equal(input_ids, ref_ids) and torch.equal(labels, ref_labels)
        assert int(ref_index) == i
    # the train order is shuffled by shuffle_seed (+ epoch), the others are in index order
    order = [int(i) for _, _, idx in dm.train_dataloader() for i in idx]
    assert order != sorted(order)
    assert [int(i) for _, _, idx in dm.val_dataloader() for i in idx] == sorted(val)
    other = TextDataModule(files=str(tmp_path / "d.jsonl"), block_size=8, shuffle_seed=5)
    assert [int(i) for _, _, b in other.train_dataloader() for i in b] != order


def _split_texts(dm, split):
    """The documents packed in ``split``, recovered from its blocks."""
    ids = []
    for input_ids, labels, _ in dm.split_dataset(split):
        ids += input_ids[labels != -100].tolist()
    data = bytes(i if i < 256 else 0 for i in ids)  # EOS -> NUL, absent from the texts
    assert data.endswith(b"\0")
    return [t.decode() for t in data[:-1].split(b"\0")]


def test_split_by_document_seeded(tmp_path):
    texts = _words(40)
    path = _jsonl(tmp_path / "d.jsonl", texts)
    dm = TextDataModule(files=path, block_size=16, val_fraction=0.2, test_fraction=0.1)
    split = dm.split
    parts = [set(split.train.tolist()), set(split.val.tolist()), set(split.test.tolist())]
    assert [len(p) for p in parts] == [28, 8, 4]
    assert set.union(*parts) == set(range(40)) and sum(map(len, parts)) == 40
    for name, members in zip(("train", "val", "test"), parts, strict=True):
        assert _split_texts(dm, name) == [texts[i] for i in sorted(members)]
    again = TextDataModule(files=path, block_size=16, val_fraction=0.2, test_fraction=0.1)
    assert np.array_equal(again.split.test, split.test) and again.fingerprint == dm.fingerprint
    other = TextDataModule(files=path, block_size=16, val_fraction=0.2, test_fraction=0.1, seed=1)
    assert not np.array_equal(other.split.test, split.test)
    assert other.fingerprint != dm.fingerprint


def test_fingerprint_follows_data_block_size_and_tokenizer(tmp_path):
    texts = _words(20)
    path = _jsonl(tmp_path / "d.jsonl", texts)
    base = TextDataModule(files=path, block_size=8)
    assert base.fingerprint == TextDataModule(files=path, block_size=8).fingerprint
    assert inputs_fingerprint(base) == inputs_fingerprint(TextDataModule(files=path, block_size=8))
    longer = TextDataModule(files=path, block_size=9)
    assert longer.fingerprint != base.fingerprint
    assert inputs_fingerprint(longer) != inputs_fingerprint(base)
    changed = _jsonl(tmp_path / "e.jsonl", texts[:-1] + [texts[-1] + "!"])
    assert TextDataModule(files=changed, block_size=8).fingerprint != base.fingerprint
    same_length = _jsonl(tmp_path / "f.jsonl", texts[:-1] + [texts[-1].capitalize()])
    assert TextDataModule(files=same_length, block_size=8).fingerprint != base.fingerprint
    # a saved byte tokenizer is the same tokenizer (another one: the Hugging Face test)
    ByteTokenizer().save_pretrained(tmp_path / "bytes")
    saved = TextDataModule(files=path, block_size=8, tokenizer=str(tmp_path / "bytes"))
    assert saved.fingerprint == base.fingerprint


def test_max_documents_and_max_bytes(tmp_path):
    texts = _words(50)
    path = _jsonl(tmp_path / "d.jsonl", texts)
    order = np.random.default_rng(3).permutation(50)
    dm = TextDataModule(files=path, seed=3, max_documents=12, val_fraction=0.25, test_fraction=0.25)
    kept = np.concatenate([dm.split.train, dm.split.val, dm.split.test])
    assert sorted(kept.tolist()) == sorted(order[:12].tolist())
    assert np.array_equal(np.sort(dm.split.test), np.sort(order[:3]))  # round(0.25 * 12)
    # max_bytes: the longest prefix of the seeded order within the cap
    sizes = np.array([len(texts[i].encode()) for i in order])
    cap = int(sizes[:17].sum()) + int(sizes[17]) - 1  # the 18th would pass it
    dm = TextDataModule(files=path, seed=3, max_bytes=cap)
    kept = np.concatenate([dm.split.train, dm.split.val, dm.split.test])
    assert sorted(kept.tolist()) == sorted(order[:17].tolist())
    assert sum(dm.document_bytes.values()) == int(sizes[:17].sum()) <= cap
    both = TextDataModule(files=path, seed=3, max_bytes=cap, max_documents=40)  # bytes first
    assert both.fingerprint == dm.fingerprint
    ids, documents = select_documents(5, [b"a", None, b"bb", b"c", b"dd"].__getitem__, 0)
    assert sorted(ids.tolist()) == [0, 2, 3, 4] and len(documents) == 4  # None is skipped


def test_default_corpus_is_the_standard_library():
    root, paths = stdlib_sources()
    assert paths == sorted(paths, key=lambda p: p.relative_to(root).as_posix())
    assert all("site-packages" not in p.parts for p in paths)
    dm = TextDataModule(
        max_documents=8, max_bytes=2_000_000, block_size=64, val_fraction=0.25, test_fraction=0.25
    )
    dm.setup("fit")
    assert dm.name.startswith("text:stdlib-3.") and str(root) in dm.source
    assert [len(getattr(dm.split, s)) for s in ("train", "val", "test")] == [4, 2, 2]
    assert sum(dm.document_bytes.values()) <= 2_000_000
    first = paths[int(dm.split.train[0])].read_bytes()  # train documents in path order
    expected = (list(first) + [EOS])[:64]
    assert dm.full_dataset().blocks[0, : len(expected)].tolist() == expected


# -------------------------------------------------------------------------------- errors
def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        TextDataModule(files=str(tmp_path / "missing.txt")).setup()
    with pytest.raises(FileNotFoundError, match="matches no file"):
        TextDataModule(files=str(tmp_path / "*.jsonl")).setup()
    (tmp_path / "a.csv").write_text("text\nhi\n")
    with pytest.raises(ValueError, match=r"'\.csv'; allowed: \.txt, \.jsonl, \.parquet"):
        TextDataModule(files=str(tmp_path / "a.csv")).setup()
    with pytest.raises(IsADirectoryError, match="directory"):
        TextDataModule(files=str(tmp_path)).setup()
    (tmp_path / "bad.txt").write_bytes(b"line one\nab\xffcd")
    with pytest.raises(ValueError, match=r"bad\.txt: not valid UTF-8 at byte offset 11 \(line 2\)"):
        TextDataModule(files=str(tmp_path / "bad.txt")).setup()
    (tmp_path / "ok.txt").write_text("fine")
    with pytest.raises(ValueError, match="named twice"):
        TextDataModule(files=[str(tmp_path / "ok.txt"), str(tmp_path / "o*.txt")]).setup()


def test_jsonl_errors(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n\n{"body": "b"}\n')
    with pytest.raises(ValueError, match=r"d\.jsonl:3: no field text_field='text'.*\['body'\]"):
        TextDataModule(files=path).setup()
    path.write_text('{"text": "a"}\n{"text": 5}\n')
    with pytest.raises(ValueError, match=r"d\.jsonl:2: text_field='text' holds a int"):
        TextDataModule(files=path).setup()
    path.write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(ValueError, match=r"d\.jsonl:2: not valid JSON"):
        TextDataModule(files=path).setup()
    path.write_text("\n")
    with pytest.raises(ValueError, match="hold no document"):
        TextDataModule(files=path).setup()


def test_parquet_documents_and_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = _words(12)
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"body": texts, "n": list(range(12))}), path)
    dm = TextDataModule(files=path, text_field="body", val_fraction=0.25, test_fraction=0.25)
    assert _split_texts(dm, "test") == [texts[i] for i in dm.split.test]
    with pytest.raises(
        ValueError, match=r"no column text_field='text'; the columns: \['body', 'n'\]"
    ):
        TextDataModule(files=path).setup()
    with pytest.raises(ValueError, match="has type int64; expected strings"):
        TextDataModule(files=path, text_field="n").setup()


def test_split_and_argument_errors(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", _words(3))
    with pytest.raises(
        ValueError, match=r"the val split has 0 documents \(0 of 3\); raise val_fraction"
    ):
        TextDataModule(files=path).setup()
    empty = _jsonl(tmp_path / "e.jsonl", ["", "", "x"])
    with pytest.raises(ValueError, match="split's 1 documents hold no token"):
        TextDataModule(files=empty, val_fraction=1 / 3, test_fraction=1 / 3, seed=0).setup()
    with pytest.raises(ValueError, match=r"block_size=1; allowed: an integer >= 2"):
        TextDataModule(files=path, block_size=1)
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction"):
        TextDataModule(files=path, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="max_documents=4; the corpus has only 3"):
        TextDataModule(files=path, max_documents=4).setup()
    with pytest.raises(ValueError, match="max_bytes=2 keeps no document"):
        TextDataModule(files=path, max_bytes=2).setup()
    with pytest.raises(FileNotFoundError, match="tokenizer="):
        TextDataModule(files=path, tokenizer=str(tmp_path / "no_tokenizer")).setup()


# ---------------------------------------------------------------------------- tokenizers
def test_byte_tokenizer_roundtrip(tmp_path):
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode("héllo")
    assert ids.tolist() == list("héllo".encode()) and len(tokenizer) == 258
    assert tokenizer.decode(np.append(ids, [EOS, PAD, -100])) == "héllo"
    assert tokenizer.decode([104, EOS, 105, PAD], skip_special_tokens=False) == "h<|eod|>i<|pad|>"
    (written,) = tokenizer.save_pretrained(tmp_path / "tok")
    assert json.loads(open(written).read())["vocab_size"] == 258
    assert isinstance(ByteTokenizer.from_pretrained(tmp_path / "tok"), ByteTokenizer)
    with pytest.raises(ValueError, match="allowed: 0..257"):
        tokenizer.decode([300])


def _word_tokenizer(directory, pad=True, eos=True):
    """A word-level Hugging Face tokenizer saved to ``directory`` (no download)."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "[EOS]": 1, "[PAD]": 2, "hello": 3, "world": 4, "the": 5}
    model = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    model.pre_tokenizer = pre_tokenizers.Whitespace()
    special = {"unk_token": "[UNK]"}
    if eos:
        special["eos_token"] = "[EOS]"
    if pad:
        special["pad_token"] = "[PAD]"
    wrapped = transformers.PreTrainedTokenizerFast(tokenizer_object=model, **special)
    wrapped.save_pretrained(directory)
    return str(directory)


def test_hugging_face_tokenizer_from_a_directory(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", ["hello world", "the world hello", "bye"])
    tok = _word_tokenizer(tmp_path / "tok")
    dm = TextDataModule(
        files=path, tokenizer=tok, block_size=3, val_fraction=1 / 3, test_fraction=1 / 3
    )
    dm.setup("fit")
    assert dm.tokenizer is not None and dm.vocab_size == dm.num_classes == 6
    assert (dm.eos_token_id, dm.pad_token_id) == (1, 2)
    assert dm.full_dataset().blocks.dtype == np.uint16
    expected = {  # document -> blocks (ids, labels); "bye" is unknown -> [UNK] = 0
        0: ([[3, 4, 1]], [[3, 4, 1]]),
        1: ([[5, 4, 3], [1, 2, 2]], [[5, 4, 3], [1, -100, -100]]),
        2: ([[0, 1, 2]], [[0, 1, -100]]),
    }
    found = [(ids.tolist(), labels.tolist()) for ids, labels, _ in dm.full_dataset()]
    rows = []
    for split in ("train", "val", "test"):
        (doc,) = getattr(dm.split, split).tolist()
        rows += list(zip(*expected[doc], strict=True))
    assert found == rows
    byte_level = TextDataModule(files=path, block_size=3, val_fraction=1 / 3, test_fraction=1 / 3)
    assert byte_level.fingerprint != dm.fingerprint
    assert inputs_fingerprint(byte_level) != inputs_fingerprint(dm)
    # no pad token: padding uses EOS, and the labels still ignore it
    no_pad = TextDataModule(
        files=path,
        tokenizer=_word_tokenizer(tmp_path / "nopad", pad=False),
        block_size=3,
        val_fraction=1 / 3,
        test_fraction=1 / 3,
    )
    assert no_pad.pad_token_id == 1 and no_pad.fingerprint != dm.fingerprint
    padded = [labels.tolist() for ids, labels, _ in no_pad.full_dataset() if 1 in ids[1:]]
    assert [1, -100, -100] in padded
    with pytest.raises(ValueError, match="has no eos_token"):
        TextDataModule(files=path, tokenizer=_word_tokenizer(tmp_path / "noeos", eos=False)).setup()


def test_hydra_config_composes(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from softlabel.train import CONF_DIR

    path = _jsonl(tmp_path / "d.jsonl", _words(40))
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["data=text", f"data.files={path}", "data.block_size=32"])
    assert cfg.data.max_bytes == 2_000_000 and cfg.data.tokenizer is None
    dm = instantiate(cfg.data, shuffle_seed=7)
    dm.setup("fit")
    input_ids, labels, index = next(iter(dm.train_dataloader()))
    assert input_ids.shape == labels.shape == (cfg.data.batch_size, 32)
    assert index.shape == (cfg.data.batch_size,) and dm.shuffle_seed == 7
