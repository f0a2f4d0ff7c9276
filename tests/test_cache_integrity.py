"""Content hashes and the cache id: silent corruption and replacement are caught."""

from __future__ import annotations

import json
import pickle
from datetime import datetime, timezone

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from softlabel.cache import TeacherCache, write_cache
from softlabel.cache import format as format_module
from softlabel.cache import writer as writer_module

NUM_SAMPLES, NUM_CLASSES = 200, 5
ROW_BYTES = NUM_CLASSES * 2  # float16 logits
BLOCK_BYTES = 10 * ROW_BYTES  # blocks of 10 rows: 20 blocks


def _write(path, logits=None, **options):
    logits = torch.randn(NUM_SAMPLES, NUM_CLASSES) if logits is None else logits
    options = {"kind": "dense", "fingerprint": "f", "teacher_sha256": "h", **options}
    return write_cache(path, logits, **options)


def _overwrite(file, position, data):
    """Overwrite bytes in place: same size, header untouched."""
    with open(file, "r+b") as handle:
        handle.seek(position)
        handle.write(data)


def _data_offset(path, name):
    return json.loads((path / "manifest.json").read_text())["files"][name]["data_offset"]


def test_manifest_records_block_hashes_and_a_cache_id(tmp_path):
    path = _write(tmp_path / "c", block_bytes=BLOCK_BYTES)
    manifest = json.loads((path / "manifest.json").read_text())
    entry = manifest["files"]["logits.npy"]
    assert entry["block_rows"] == 10 and len(entry["block_sha256"]) == 20
    assert entry["size"] == (path / "logits.npy").stat().st_size
    assert len(manifest["cache_id"]) == 32
    default = json.loads((_write(tmp_path / "d") / "manifest.json").read_text())
    assert len(default["files"]["logits.npy"]["block_sha256"]) == 1  # 2 KB < 64 MiB
    assert default["cache_id"] != manifest["cache_id"]


def test_bytes_overwritten_after_the_header_are_refused_when_read(tmp_path):
    logits = torch.randn(NUM_SAMPLES, NUM_CLASSES)
    path = _write(tmp_path / "c", logits, block_bytes=BLOCK_BYTES)
    offset = _data_offset(path, "logits.npy")
    _overwrite(path / "logits.npy", offset + 57 * ROW_BYTES + 2, b"\x00\x7c" * 2)  # row 57: +inf
    cache = TeacherCache.open(path)  # lazy: headers and sizes only
    expected = logits[:10].numpy().astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(cache.lookup(torch.arange(10)).numpy(), expected)
    with pytest.raises(
        ValueError,
        match=r"teacher cache is corrupt: .*logits\.npy' rows 50\.\.59 \(block 5\) do not match "
        r"the content hash .*rebuild the cache with softlabel-cache",
    ):
        cache.lookup(torch.tensor([3, 57]))
    with pytest.raises(ValueError, match=r"logits\.npy' rows 50\.\.59 \(block 5\)"):
        TeacherCache.open(path, verify="full")
    unchecked = TeacherCache.open(path, verify="none")
    assert torch.isinf(unchecked.lookup(torch.tensor([57]))).any()  # what "none" would serve


def test_corruption_with_the_default_block_size_and_in_a_topk_cache(tmp_path):
    dense = _write(tmp_path / "dense")
    _overwrite(dense / "logits.npy", _data_offset(dense, "logits.npy") + 1000, b"\x01\x02\x03")
    with pytest.raises(ValueError, match=r"logits\.npy' rows 0\.\.199 \(block 0\)"):
        TeacherCache.open(dense).lookup(torch.tensor([0]))
    topk = _write(tmp_path / "topk", kind="topk", k=2)
    _overwrite(topk / "topk_index.npy", _data_offset(topk, "topk_index.npy") + 4, b"\x04\x00")
    with pytest.raises(ValueError, match=r"topk_index\.npy' rows 0\.\.199 \(block 0\)"):
        TeacherCache.open(topk).lookup(torch.tensor([199]))


def test_each_block_is_hashed_once_on_first_read(tmp_path, monkeypatch):
    path = _write(tmp_path / "c", block_bytes=BLOCK_BYTES)
    hashed = []
    real = format_module.block_sha256

    def counting(array, block, block_rows):
        hashed.append(block)
        return real(array, block, block_rows)

    monkeypatch.setattr(format_module, "block_sha256", counting)
    cache = TeacherCache.open(path)
    assert hashed == []
    cache.lookup(torch.tensor([5, 35, 7, 199]))
    assert sorted(hashed) == [0, 3, 19]
    cache.lookup(torch.tensor([0, 39, 190]))
    assert sorted(hashed) == [0, 3, 19]
    copy = pickle.loads(pickle.dumps(cache))  # another process checks for itself
    copy.lookup(torch.tensor([1]))
    assert sorted(hashed) == [0, 0, 3, 19]
    hashed.clear()
    TeacherCache.open(path, verify="full")
    assert sorted(hashed) == list(range(20))


def test_changed_header_or_size_is_refused_on_open(tmp_path):
    path = _write(tmp_path / "c")
    with open(path / "logits.npy", "ab") as handle:
        handle.write(b"\x00" * 10)
    with pytest.raises(ValueError, match=r"corrupt: .*logits\.npy' is \d+ bytes .*recorded"):
        TeacherCache.open(path)
    path = _write(tmp_path / "d")
    header = (path / "logits.npy").read_bytes()[:128]
    assert b"'fortran_order': False" in header
    _overwrite(path / "logits.npy", header.index(b"False"), b"True ")
    with pytest.raises(ValueError, match=r"header of .*logits\.npy' differs"):
        TeacherCache.open(path)


@pytest.fixture
def same_second(monkeypatch):
    """Every commit gets the same ``created`` time, as two commits within one second did."""

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)

    monkeypatch.setattr(writer_module, "datetime", Frozen)


def _replace(path, logits):
    return _write(path, logits, overwrite=True)


def test_cache_replaced_before_first_read_is_detected(tmp_path, same_second):
    logits = torch.randn(NUM_SAMPLES, NUM_CLASSES)
    path = _write(tmp_path / "c", logits)
    cache = TeacherCache.open(path)
    _replace(path, logits)  # same content, same metadata, same second
    with pytest.raises(ValueError, match=r"changed since it was opened \(cache_id '[0-9a-f]{32}'"):
        cache.lookup(torch.tensor([0]))


def test_cache_replaced_while_in_use_is_detected(tmp_path, same_second):
    logits = torch.randn(NUM_SAMPLES, NUM_CLASSES)
    path = _write(tmp_path / "c", logits)
    cache = TeacherCache.open(path)
    cache.lookup(torch.tensor([0, 1]))  # mapped and in use
    worker_copy = pickle.dumps(cache)
    _replace(path, logits * 2)
    with pytest.raises(ValueError, match="changed since it was opened"):
        cache.lookup(torch.tensor([2]))
    with pytest.raises(ValueError, match="changed since it was opened"):
        pickle.loads(worker_copy).lookup(torch.tensor([2]))
    assert TeacherCache.open(path).lookup(torch.tensor([2])).abs().sum() > 0  # reopen: fine


def test_cache_removed_while_in_use_is_detected(tmp_path):
    path = _write(tmp_path / "c")
    cache = TeacherCache.open(path)
    cache.lookup(torch.tensor([0]))
    (path / "manifest.json").unlink()
    with pytest.raises(ValueError, match=r"changed since it was opened .*no longer be read"):
        cache.lookup(torch.tensor([1]))


def test_version_1_cache_without_hashes_is_refused_with_a_rebuild_hint(tmp_path):
    path = _write(tmp_path / "c")
    manifest = json.loads((path / "manifest.json").read_text())
    for key in ("cache_id", "files"):
        del manifest[key]
    manifest["version"] = 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        ValueError, match=r"format version 1, which records no content hashes.*rebuild it"
    ):
        TeacherCache.open(path)


def test_manifest_without_a_file_entry_is_corrupt(tmp_path):
    path = _write(tmp_path / "c", block_bytes=BLOCK_BYTES)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["logits.npy"]["block_sha256"].pop()
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"corrupt manifest: .*19 block hashes.*need 20"):
        TeacherCache.open(path)


def test_verify_option_is_checked_and_comes_from_the_teacher_config(tmp_path):
    from softlabel.modules.build import build_datamodule, build_reference_provider
    from softlabel.train import CONF_DIR

    with pytest.raises(ValueError, match=r"verify='always' is not allowed; use one of"):
        TeacherCache.open(_write(tmp_path / "c"), verify="always")
    with pytest.raises(ValueError, match="block_bytes=0 must be a positive integer"):
        _write(tmp_path / "d", block_bytes=0)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "data.subset=100",
                "target=kd",
                "teacher=cached",
                f"teacher.cache={tmp_path / 'c'}",
                "teacher.verify=sometimes",
            ],
        )
    assert cfg.teacher.verify == "sometimes"
    datamodule = build_datamodule(cfg)
    with pytest.raises(ValueError, match=r"verify='sometimes' is not allowed"):
        build_reference_provider(cfg, "teacher_logits", datamodule)


def test_array_symlinked_out_of_the_cache_is_refused(tmp_path):
    """Same bytes, so every hash matches: only the manifest rule refuses it."""
    path = _write(tmp_path / "c")
    outside = tmp_path / "elsewhere.npy"
    (path / "logits.npy").rename(outside)
    (path / "logits.npy").symlink_to(outside)
    with pytest.raises(
        ValueError,
        match=r"manifest '.*manifest.json': files entry 'logits.npy' resolves to .*outside",
    ):
        TeacherCache.open(path, verify="full")
    (path / "logits.npy").unlink()
    outside.rename(path / "logits.npy")
    (tmp_path / "link").symlink_to(path)  # the cache directory itself may be a link
    assert len(TeacherCache.open(tmp_path / "link", verify="full")) == NUM_SAMPLES


@pytest.mark.parametrize(
    ("names", "match"),
    [
        (["../d/logits.npy"], r"files entry '\.\./d/logits\.npy' has a '\.', '\.\.'"),
        ([], r"not listed \(would be read unchecked\) \['logits.npy'\]"),
        (["logits.npy", "notes.txt"], r"listed but never read \['notes.txt'\]"),
    ],
)
def test_manifest_files_follow_the_shared_rule(tmp_path, names, match):
    """Each listed name is checked (another cache's file, ``d/logits.npy``, is as valid as
    this one's), every array read is listed, and nothing else."""
    path = _write(tmp_path / "c")
    _write(tmp_path / "d")
    manifest = json.loads((path / "manifest.json").read_text())
    entry = manifest["files"]["logits.npy"]
    manifest["files"] = {name: entry for name in names}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=f"manifest of teacher cache '.*c': .*{match}"):
        TeacherCache.open(path)
