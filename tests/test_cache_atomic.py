"""Atomic publication: interrupted writes leave nothing that opens; overwrite is opt-in."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from softlabel.cache import TeacherCache, write_cache
from softlabel.cache import writer as writer_module

CRASH_MID_WRITE = textwrap.dedent(
    """
    import os, sys, torch
    from softlabel.cache import CacheWriter
    writer = CacheWriter(sys.argv[1], kind="dense", num_samples=20, num_classes=5,
                         fingerprint="f", teacher_sha256="h")
    writer.write(torch.arange(10), torch.randn(10, 5))
    os._exit(3)  # the process dies: no cleanup, no commit
    """
)


def test_process_killed_mid_write_leaves_no_cache_that_opens(tmp_path):
    target = tmp_path / "cache"
    done = subprocess.run([sys.executable, "-c", CRASH_MID_WRITE, str(target)], check=False)
    assert done.returncode == 3
    assert not target.exists()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TeacherCache.open(target)
    (leftover,) = tmp_path.iterdir()
    assert leftover.name.startswith("cache.tmp-")
    with pytest.raises(ValueError, match="is incomplete: no manifest.json"):
        TeacherCache.open(leftover)


def test_failure_while_publishing_keeps_the_old_cache(tmp_path, monkeypatch):
    old = torch.zeros(6, 3)
    target = write_cache(tmp_path / "c", old, kind="dense", fingerprint="old", teacher_sha256="h")
    real_replace = os.replace
    calls = []

    def replace_failing_on_the_new_cache(src, dst):
        calls.append((str(src), str(dst)))
        if ".tmp-" in str(src):
            raise OSError("disk full (simulated)")
        real_replace(src, dst)

    monkeypatch.setattr(writer_module.os, "replace", replace_failing_on_the_new_cache)
    with pytest.raises(OSError, match="simulated"):
        write_cache(
            target,
            torch.ones(6, 3),
            kind="dense",
            fingerprint="new",
            teacher_sha256="h",
            overwrite=True,
        )
    cache = TeacherCache.open(target, fingerprint="old")
    np.testing.assert_array_equal(cache.lookup(torch.arange(6)).numpy(), old.numpy())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    assert any(".tmp-" in src for src, _ in calls)


def test_existing_cache_is_refused_unless_overwrite(tmp_path):
    target = write_cache(
        tmp_path / "c", torch.zeros(4, 3), kind="dense", fingerprint="a", teacher_sha256="h"
    )
    with pytest.raises(FileExistsError, match="already exists; pass overwrite=true"):
        write_cache(target, torch.ones(4, 3), kind="dense", fingerprint="b", teacher_sha256="h")
    assert TeacherCache.open(target).fingerprint == "a"
    write_cache(
        target,
        torch.ones(4, 3),
        kind="topk",
        k=2,
        fingerprint="b",
        teacher_sha256="h",
        overwrite=True,
    )
    cache = TeacherCache.open(target, fingerprint="b")
    assert cache.kind == "topk" and sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    assert not (target / "logits.npy").exists()


def test_overwrite_refuses_a_directory_that_is_not_a_cache(tmp_path):
    target = tmp_path / "results"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"is not a teacher cache \(it holds \['notes.txt'\]\)"):
        write_cache(
            target,
            torch.zeros(4, 3),
            kind="dense",
            fingerprint="a",
            teacher_sha256="h",
            overwrite=True,
        )
    assert (target / "notes.txt").read_text() == "keep me"


def test_exception_inside_the_writer_block_removes_the_temporary_directory(tmp_path):
    with pytest.raises(RuntimeError, match="teacher failed"):
        with writer_module.CacheWriter(
            tmp_path / "c",
            kind="dense",
            num_samples=4,
            num_classes=3,
            fingerprint="f",
            teacher_sha256="h",
        ) as writer:
            writer.write(torch.arange(2), torch.zeros(2, 3))
            raise RuntimeError("teacher failed")
    assert list(tmp_path.iterdir()) == []
