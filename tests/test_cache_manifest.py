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


def as_version_2(path):
    """Rewrite a fresh cache into what the version-2 writer left: no row_shape, no
    bytes_per_token, and for top-k no topk_tail.npy."""
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["version"] == 3 and manifest["row_shape"] == []
    del manifest["row_shape"], manifest["bytes_per_token"]
    manifest["version"] = 2
    if manifest["kind"] == "topk":
        del manifest["files"]["topk_tail.npy"]
        (path / "topk_tail.npy").unlink()
    (path / "manifest.json").write_text(json.dumps(manifest))
    return manifest


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_version_2_topk_cache_is_read_with_the_tail_derived_from_the_kept_mass(tmp_path, dtype):
    logits = torch.randn(30, 8, generator=torch.Generator().manual_seed(0)) * 2
    logits[0, 3] = 40.0  # a certain row: the rounded kept mass reaches 1, the tail is 0
    path = write_cache(
        tmp_path / "c", logits, kind="topk", k=3, dtype=dtype, fingerprint="f", teacher_sha256="h"
    )
    current = TeacherCache.open(path).lookup(torch.arange(30))
    as_version_2(path)
    cache = TeacherCache.open(path, verify="full")
    assert cache.manifest.version == 2 and cache.bytes_per_token == 3 * (
        2 + np.dtype(dtype).itemsize
    )
    assert "version=2" in repr(cache)
    old = cache.lookup(torch.arange(30))
    kept = np.load(path / "topk_logprob.npy").astype(np.float64)
    with np.errstate(divide="ignore"):
        derived = np.log(np.maximum(0.0, 1.0 - np.exp(kept).sum(-1)))
    torch.testing.assert_close(old.index, current.index)
    torch.testing.assert_close(old.logprob, current.logprob)
    np.testing.assert_allclose(old.tail.numpy(), derived.astype(np.float32), rtol=1e-6)
    assert old.tail[0] == -np.inf  # the loss reads it as a zero tail (forward KL, JSD, TVD)
    if dtype == "float32":  # away from rounding the derived tail is the stored one
        np.testing.assert_allclose(old.tail[1:].numpy(), current.tail[1:].numpy(), rtol=1e-4)
    uniform = TeacherCache.open(path, tail="uniform").lookup(torch.tensor([5]))
    assert uniform.shape == (1, 8) and torch.isfinite(uniform).all()


def test_version_2_dense_cache_still_opens_and_a_bad_version_2_manifest_is_corrupt(tmp_path):
    logits = torch.randn(6, 4)
    path = write_cache(tmp_path / "d", logits, kind="dense", fingerprint="f", teacher_sha256="h")
    manifest = as_version_2(path)
    np.testing.assert_array_equal(
        TeacherCache.open(path).lookup(torch.tensor([2])).numpy(),
        logits[[2]].numpy().astype(np.float16).astype(np.float32),
    )
    rewrite_manifest(path, **{**manifest, "row_shape": [3]})
    with pytest.raises(
        ValueError, match=r"corrupt manifest: row_shape=\[3\] needs format version 3"
    ):
        TeacherCache.open(path)
    rewrite_manifest(path, version=3, row_shape=[], bytes_per_token=7)
    with pytest.raises(ValueError, match="corrupt manifest: bytes_per_token=7 does not match"):
        TeacherCache.open(path)
