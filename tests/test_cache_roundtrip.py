"""Round trip of dense and top-k teacher caches against independent numpy references."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from softlabel.cache import CacheWriter, TeacherCache, reconstruct_topk_logits, write_cache

NUM_SAMPLES, NUM_CLASSES = 40, 12


@pytest.fixture
def logits() -> torch.Tensor:
    return torch.randn(NUM_SAMPLES, NUM_CLASSES, generator=torch.Generator().manual_seed(1)) * 3


def reference_topk_distribution(logits: np.ndarray, k: int) -> np.ndarray:
    """Float64 reference: keep the k largest softmax probabilities, spread the rest uniformly."""
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    out = np.empty_like(p)
    for row, probs in enumerate(p):
        kept = np.argsort(-probs)[:k]
        rest = (1.0 - probs[kept].sum()) / (probs.size - k)
        out[row] = rest
        out[row, kept] = probs[kept]
    return out


def test_dense_round_trip_matches_fp16_logits(tmp_path, logits):
    path = write_cache(
        tmp_path / "dense", logits, kind="dense", fingerprint="fp", teacher_sha256="h"
    )
    cache = TeacherCache.open(path)
    index = torch.tensor([5, 0, 39, 5])
    got = cache.lookup(index)
    expected = logits.numpy().astype(np.float16).astype(np.float32)[index.numpy()]
    assert got.dtype == torch.float32 and got.shape == (4, NUM_CLASSES)
    np.testing.assert_array_equal(got.numpy(), expected)
    assert np.load(path / "logits.npy", mmap_mode="r").dtype == np.float16
    assert cache.nbytes < NUM_SAMPLES * NUM_CLASSES * 2 + 4096


@pytest.mark.parametrize(
    ("k", "dtype", "tolerance"),
    [(1, "float32", 1e-5), (3, "float32", 1e-5), (11, "float32", 1e-5), (3, "float16", 2e-3)],
)
def test_topk_round_trip_matches_reference_distribution(tmp_path, logits, k, dtype, tolerance):
    """fp16 log-probabilities round each kept p by ~2**-11 relative, and the leftover with them."""
    path = write_cache(
        tmp_path / "topk",
        logits,
        kind="topk",
        k=k,
        dtype=dtype,
        fingerprint="fp",
        teacher_sha256="h",
    )
    cache = TeacherCache.open(path)
    got = torch.softmax(cache.lookup(torch.arange(NUM_SAMPLES)), dim=-1).numpy()
    expected = reference_topk_distribution(logits.numpy(), k)
    np.testing.assert_allclose(got, expected, rtol=tolerance, atol=tolerance / 10)
    stored = np.load(path / "topk_index.npy", mmap_mode="r")
    assert stored.shape == (NUM_SAMPLES, k) and stored.dtype == np.int16
    assert np.load(path / "topk_logprob.npy", mmap_mode="r").dtype == np.dtype(dtype)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_topk_logits_soften_like_the_reconstruction(temperature):
    """softmax(log p / T) == p**(1/T) / sum(p**(1/T)) for the reconstructed p."""
    top_index = torch.tensor([[2, 0], [1, 3]])
    top_logprob = torch.tensor([[0.6, 0.2], [0.9, 0.05]]).log()
    logits = reconstruct_topk_logits(top_index, top_logprob, num_classes=4)
    p = torch.tensor([[0.2, 0.1, 0.6, 0.1], [0.025, 0.9, 0.025, 0.05]])
    softened = p ** (1 / temperature) / (p ** (1 / temperature)).sum(-1, keepdim=True)
    torch.testing.assert_close(torch.softmax(logits / temperature, -1), softened)


@pytest.mark.parametrize(("k", "temperature"), [(1, 1.0), (3, 1.0), (1, 2.0), (3, 4.0), (6, 4.0)])
def test_uniform_leftover_gives_the_tail_its_largest_softened_share(logits, k, temperature):
    """At T = 1 the tail keeps its mass; at T > 1 the uniform leftover over-weights it.

    Power-mean inequality: sum_tail p_c**(1/T) <= (K - k) * (R / (K - k))**(1/T), with
    R = sum_tail p_c, equality iff the tail is uniform (checked in float64 with numpy).
    """
    z = logits.double().numpy()
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    order = np.argsort(-p, axis=1)
    kept, tail = order[:, :k], order[:, k:]
    logprob = torch.log_softmax(logits.double(), -1)
    rebuilt = reconstruct_topk_logits(
        torch.from_numpy(kept), logprob.gather(1, torch.from_numpy(kept)), NUM_CLASSES
    )
    rebuilt_tail = torch.softmax(rebuilt.double() / temperature, -1).numpy()
    rebuilt_tail = np.take_along_axis(rebuilt_tail, tail, 1).sum(1)
    powered = p ** (1 / temperature)
    teacher_tail = np.take_along_axis(powered, tail, 1).sum(1) / powered.sum(1)
    if temperature == 1.0:
        np.testing.assert_allclose(rebuilt_tail, teacher_tail, rtol=1e-5)
    else:
        assert (rebuilt_tail > teacher_tail).all()


def test_topk_logits_stay_finite_for_a_certain_teacher(tmp_path):
    logits = torch.tensor([[0.0, 200.0, -200.0, 0.0]] * 3)
    cache = TeacherCache.open(
        write_cache(tmp_path / "c", logits, kind="topk", k=1, fingerprint="f", teacher_sha256="h")
    )
    out = cache.lookup(torch.tensor([0, 2]))
    assert torch.isfinite(out).all()
    assert torch.softmax(out, -1)[:, 1].min() > 0.999999


def test_streamed_writes_in_any_order_and_manifest_fields(tmp_path, logits):
    order = torch.randperm(NUM_SAMPLES)
    with CacheWriter(
        tmp_path / "c",
        kind="topk",
        k=4,
        dtype="float32",
        num_samples=NUM_SAMPLES,
        num_classes=NUM_CLASSES,
        fingerprint="abc",
        teacher_sha256="0f" * 32,
        teacher_config={"name": "mlp_large"},
    ) as writer:
        for chunk in order.split(7):
            writer.write(chunk, logits[chunk])
        writer.commit()
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["kind"] == "topk" and manifest["k"] == 4 and manifest["dtype"] == "float32"
    assert manifest["num_samples"] == NUM_SAMPLES and manifest["num_classes"] == NUM_CLASSES
    assert manifest["fingerprint"] == "abc" and manifest["teacher_sha256"] == "0f" * 32
    assert manifest["teacher_config"] == {"name": "mlp_large"} and manifest["created"]
    cache = TeacherCache.open(tmp_path / "c")
    top = torch.log_softmax(logits, -1).topk(4, -1)
    got = np.load(tmp_path / "c" / "topk_logprob.npy")
    np.testing.assert_allclose(got, top.values.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(np.load(tmp_path / "c" / "topk_index.npy"), top.indices.numpy())
    assert pickle.loads(pickle.dumps(cache)).lookup(torch.tensor([1])).shape == (1, NUM_CLASSES)


def test_commit_refuses_missing_rows(tmp_path, logits):
    with CacheWriter(
        tmp_path / "c", kind="dense", num_samples=NUM_SAMPLES, num_classes=NUM_CLASSES,
        fingerprint="f", teacher_sha256="h",
    ) as writer:  # fmt: skip
        writer.write(torch.arange(NUM_SAMPLES - 1), logits[:-1])
        with pytest.raises(
            ValueError, match=r"1 of 40 rows were never written \(first missing index 39\)"
        ):
            writer.commit()
    assert not (tmp_path / "c").exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "sparse"}, "kind='sparse' is not allowed"),
        ({"kind": "topk", "k": 12}, r"k=12 must be an integer in \[1, num_classes - 1\]"),
        ({"kind": "topk", "k": 0}, "k=0 must be"),
        ({"kind": "dense", "dtype": "bfloat16"}, "dtype='bfloat16' is not allowed"),
    ],
)
def test_writer_rejects_bad_layouts(tmp_path, logits, kwargs, message):
    with pytest.raises(ValueError, match=message):
        write_cache(tmp_path / "c", logits, fingerprint="f", teacher_sha256="h", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_lookup_rejects_out_of_range_and_float_indices(tmp_path, logits):
    cache = TeacherCache.open(
        write_cache(tmp_path / "c", logits, kind="dense", fingerprint="f", teacher_sha256="h")
    )
    with pytest.raises(ValueError, match=r"index values must lie in \[0, 39\].*got \[-1, 2\]"):
        cache.lookup(torch.tensor([2, -1]))
    with pytest.raises(ValueError, match="1-D integer tensor"):
        cache.lookup(torch.tensor([1.0]))


def test_dense_fp16_overflow_is_refused(tmp_path):
    logits = torch.tensor([[1e6, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="do not fit dtype='float16'"):
        write_cache(tmp_path / "c", logits, kind="dense", fingerprint="f", teacher_sha256="h")
    assert list(tmp_path.iterdir()) == []
