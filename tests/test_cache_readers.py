"""Several processes map the same cache at once and read the same values."""

from __future__ import annotations

import multiprocessing

import numpy as np
import torch

from softlabel.cache import TeacherCache, write_cache


def read_rows(cache: TeacherCache, index: list[int]) -> tuple[bool, np.ndarray]:
    """Runs in a spawned process: was the memmap still unopened after unpickling? the rows."""
    unopened = cache._arrays is None
    return unopened, cache.lookup(torch.tensor(index)).numpy()


def test_two_spawned_processes_read_the_same_memmap_and_agree(tmp_path):
    logits = torch.randn(64, 7) * 2
    dense = TeacherCache.open(
        write_cache(tmp_path / "dense", logits, kind="dense", fingerprint="f", teacher_sha256="h")
    )
    topk = TeacherCache.open(  # tail="uniform" travels with the pickled cache: dense rows
        write_cache(
            tmp_path / "topk", logits, kind="topk", k=3, fingerprint="f", teacher_sha256="h"
        ),
        tail="uniform",
    )
    index = [63, 0, 17, 17, 42]
    dense.lookup(torch.tensor([0]))  # mapped here too: children must map on their own
    jobs = [(cache, index) for cache in (dense, topk) for _ in range(2)]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.starmap(read_rows, jobs)
    assert all(unopened for unopened, _ in results)
    (_, dense_a), (_, dense_b), (_, topk_a), (_, topk_b) = results
    np.testing.assert_array_equal(dense_a, dense_b)
    np.testing.assert_array_equal(topk_a, topk_b)
    np.testing.assert_array_equal(
        dense_a, logits.numpy().astype(np.float16)[index].astype(np.float32)
    )
    np.testing.assert_array_equal(topk_a, topk.lookup(torch.tensor(index)).numpy())
    kept = torch.log_softmax(logits[index], -1).topk(3, -1).indices
    assert (torch.from_numpy(topk_a).topk(3, -1).indices == kept).all()
