"""A stale, mismatched, incomplete or corrupt cache is refused with a clear error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from softlabel.cache import FORMAT_VERSION, TeacherCache, write_cache


@pytest.fixture
def cache_path(tmp_path):
    logits = torch.randn(8, 5)
    return write_cache(
        tmp_path / "c", logits, kind="topk", k=2, fingerprint="data-1", teacher_sha256="abc"
    )


@pytest.mark.parametrize(
    ("expected", "message"),
    [
        (
            {"fingerprint": "data-2"},
            "fingerprint mismatch: the cache has fingerprint='data-1', expected fingerprint='data-2'",
        ),
        (
            {"teacher_sha256": "def"},
            "teacher_sha256 mismatch: the cache has teacher_sha256='abc', expected teacher_sha256='def'",
        ),
        (
            {"num_classes": 10},
            "num_classes mismatch: the cache has num_classes=5, expected num_classes=10",
        ),
    ],
)
def test_mismatched_expectation_is_refused(cache_path, expected, message):
    with pytest.raises(ValueError, match=message):
        TeacherCache.open(cache_path, **expected)


def test_matching_expectations_open(cache_path):
    cache = TeacherCache.open(cache_path, fingerprint="data-1", num_classes=5, teacher_sha256="abc")
    assert (cache.kind, cache.k, len(cache), cache.num_classes) == ("topk", 2, 8, 5)


def rewrite_manifest(path, **changes):
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(changes)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_other_format_version_is_refused(cache_path):
    rewrite_manifest(cache_path, version=FORMAT_VERSION + 1)
    with pytest.raises(
        ValueError, match=f"version mismatch: the cache has version={FORMAT_VERSION + 1}"
    ):
        TeacherCache.open(cache_path)


def test_missing_manifest_is_refused_as_incomplete(cache_path):
    (cache_path / "manifest.json").unlink()
    with pytest.raises(ValueError, match="is incomplete: no manifest.json"):
        TeacherCache.open(cache_path)


@pytest.mark.parametrize(
    "content", ["{not json", "[1, 2]", json.dumps({"version": FORMAT_VERSION})]
)
def test_unreadable_manifest_is_refused_as_corrupt(cache_path, content):
    (cache_path / "manifest.json").write_text(content)
    with pytest.raises(ValueError, match="corrupt"):
        TeacherCache.open(cache_path)


def test_array_of_wrong_shape_is_refused_as_corrupt(cache_path):
    np.save(cache_path / "topk_logprob.npy", np.zeros((7, 2), dtype=np.float16))
    with pytest.raises(
        ValueError,
        match=r"corrupt: .*topk_logprob.npy' holds shape=\(7, 2\).*expects shape=\(8, 2\)",
    ):
        TeacherCache.open(cache_path)


def test_missing_array_is_refused_as_corrupt(cache_path):
    (cache_path / "topk_index.npy").unlink()
    with pytest.raises(ValueError, match="corrupt: cannot read"):
        TeacherCache.open(cache_path)


def test_cache_replaced_after_opening_is_refused_on_first_lookup(cache_path):
    cache = TeacherCache.open(cache_path)
    write_cache(
        cache_path,
        torch.zeros(8, 5),
        kind="dense",
        fingerprint="data-9",
        teacher_sha256="x",
        overwrite=True,
    )
    with pytest.raises(ValueError, match="changed since it was opened"):
        cache.lookup(torch.tensor([0]))
