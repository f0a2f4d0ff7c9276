"""Round trip of dense and top-k teacher caches against independent numpy references."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from softlabel.cache import CacheWriter, TeacherCache, reconstruct_topk_logits, write_cache
from softlabel.targets import TopKLogits

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
    """tail="uniform": fp16 log-probabilities round each kept p by ~2**-11 relative, and the
    stored log tail mass its R by ~2**-11 |log R| relative."""
    path = write_cache(
        tmp_path / "topk",
        logits,
        kind="topk",
        k=k,
        dtype=dtype,
        fingerprint="fp",
        teacher_sha256="h",
    )
    cache = TeacherCache.open(path, tail="uniform")
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
    path = write_cache(
        tmp_path / "c", logits, kind="topk", k=1, fingerprint="f", teacher_sha256="h"
    )
    out = TeacherCache.open(path, tail="uniform").lookup(torch.tensor([0, 2]))
    assert torch.isfinite(out).all()
    assert torch.softmax(out, -1)[:, 1].min() > 0.999999
    bucket = TeacherCache.open(path).lookup(torch.tensor([0, 2]))
    exact = np.logaddexp.reduce(np.array([-200.0, -400.0, -200.0]))  # log(2 e^-200 + e^-400)
    np.testing.assert_allclose(bucket.tail.numpy(), exact, rtol=1e-3)  # fp16 keeps it
    assert (bucket.index[:, 0] == 1).all() and (bucket.logprob == 0).all()


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
    # float64 from the logits: log(1 - exp(logsumexp(top))) of the float32 top-k values
    # loses up to ~1e-5 relative, more than the masked log-sum-exp under test
    _, _, exact_tail = exact_reference(logits.numpy(), 4)
    got_tail = np.load(tmp_path / "c" / "topk_tail.npy")
    np.testing.assert_allclose(got_tail, exact_tail, rtol=1e-5)
    copy = pickle.loads(pickle.dumps(cache))
    assert isinstance(copy.lookup(torch.tensor([1])), TopKLogits)
    uniform = pickle.loads(pickle.dumps(TeacherCache.open(tmp_path / "c", tail="uniform")))
    assert uniform.lookup(torch.tensor([1])).shape == (1, NUM_CLASSES)


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


def exact_reference(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float64 numpy: ids of the k largest logits, their log-softmax, log of the rest's mass."""
    z = logits.astype(np.float64)
    logp = z - np.logaddexp.reduce(z, axis=-1, keepdims=True)
    order = np.argsort(-logp, axis=-1, kind="stable")
    kept, rest = order[..., :k], order[..., k:]
    tail = np.logaddexp.reduce(np.take_along_axis(logp, rest, -1), axis=-1)
    return kept, np.take_along_axis(logp, kept, -1), tail


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_topk_bucket_lookup_returns_the_stored_reference_with_the_exact_tail(tmp_path, dtype):
    """The tail is the log-sum-exp of the other ids' log-probabilities, exact even where
    1 - sum(p) is lost to rounding (a confident teacher: tails down to e^-60)."""
    logits = torch.randn(NUM_SAMPLES, NUM_CLASSES, generator=torch.Generator().manual_seed(4))
    logits[:, 0] += torch.linspace(0, 60, NUM_SAMPLES)
    path = write_cache(
        tmp_path / "c", logits, kind="topk", k=3, dtype=dtype, fingerprint="f", teacher_sha256="h"
    )
    got = TeacherCache.open(path).lookup(torch.arange(NUM_SAMPLES))
    kept, logprob, tail = exact_reference(logits.numpy(), 3)
    assert isinstance(got, TopKLogits) and got.index.dtype == torch.int64
    assert got.logprob.dtype == torch.float32 and got.tail.shape == (NUM_SAMPLES,)
    np.testing.assert_array_equal(got.index.numpy(), kept)
    rtol = 1e-5 if dtype == "float32" else 2**-11
    np.testing.assert_allclose(got.logprob.numpy(), logprob, rtol=rtol, atol=1e-6)
    np.testing.assert_allclose(got.tail.numpy(), tail, rtol=rtol)
    assert tail.min() < -50  # where 1 - sum(p) in float32 is 0 or noise
    stored = np.load(path / "topk_tail.npy")
    assert stored.dtype == np.dtype(dtype) and stored.shape == (NUM_SAMPLES,)


@pytest.mark.parametrize(("kind", "k"), [("dense", None), ("topk", 4)])
def test_sequence_cache_round_trip_with_row_shape(tmp_path, kind, k):
    """Blocks of L = 6 tokens per dataset index, K = 50: (N, L, K) in, (B, L, ...) out."""
    n, length, vocab = 9, 6, 50
    logits = torch.randn(n, length, vocab, generator=torch.Generator().manual_seed(2)) * 4
    with CacheWriter(
        tmp_path / "seq",
        kind=kind,
        k=k,
        num_samples=n,
        num_classes=vocab,
        row_shape=(length,),
        fingerprint="f",
        teacher_sha256="h",
        block_bytes=1000,  # several hashed blocks of whole items
    ) as writer:
        writer.write(torch.tensor([8, 0, 4]), logits[[8, 0, 4]])
        writer.write(torch.tensor([1, 2, 3, 5, 6, 7]), logits[[1, 2, 3, 5, 6, 7]])
        writer.commit()
    manifest = json.loads((tmp_path / "seq" / "manifest.json").read_text())
    assert manifest["row_shape"] == [length] and manifest["version"] == 3
    per_token = vocab * 2 if kind == "dense" else k * (2 + 2) + 2  # int16 ids, fp16 values
    assert manifest["bytes_per_token"] == per_token
    cache = TeacherCache.open(tmp_path / "seq", verify="full")
    assert cache.row_shape == (length,) and f"bytes_per_token={per_token}" in repr(cache)
    assert "row_shape=[6]" in repr(cache)
    index = torch.tensor([7, 0, 7])
    got = cache.lookup(index)
    if kind == "dense":
        expected = logits[index].numpy().astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(got.numpy(), expected)
        return
    kept, logprob, tail = exact_reference(logits[index].numpy(), k)
    assert got.index.shape == (3, length, k) and got.tail.shape == (3, length)
    np.testing.assert_array_equal(got.index.numpy(), kept)
    np.testing.assert_allclose(got.logprob.numpy(), logprob, rtol=2**-11, atol=1e-6)
    np.testing.assert_allclose(got.tail.numpy(), tail, rtol=2**-11)
    dense = TeacherCache.open(tmp_path / "seq", tail="uniform").lookup(index)
    assert dense.shape == (3, length, vocab)
    np.testing.assert_allclose(
        np.take_along_axis(dense.numpy(), kept, -1), got.logprob.numpy(), rtol=0, atol=0
    )


def test_writer_checks_the_row_shape(tmp_path):
    with pytest.raises(ValueError, match=r"row_shape=\[0\] must be a list of positive integers"):
        CacheWriter(
            tmp_path / "c", kind="dense", num_samples=2, num_classes=3, row_shape=[0],
            fingerprint="f", teacher_sha256="h",
        )  # fmt: skip
    with CacheWriter(
        tmp_path / "c", kind="topk", k=1, num_samples=2, num_classes=3, row_shape=(4,),
        fingerprint="f", teacher_sha256="h",
    ) as writer:  # fmt: skip
        with pytest.raises(
            ValueError,
            match=r"logits shape=\(2, 3\) must be \(len\(index\), \*row_shape, num_classes\) "
            r"= \(2, 4, 3\) \(row_shape=\[4\]\)",
        ):
            writer.write(torch.arange(2), torch.zeros(2, 3))
    assert list(tmp_path.iterdir()) == []


def test_lookup_tail_option_is_checked(tmp_path, logits):
    path = write_cache(
        tmp_path / "c", logits, kind="topk", k=2, fingerprint="f", teacher_sha256="h"
    )
    with pytest.raises(
        ValueError, match=r"tail='spread' is not allowed; use one of \('bucket', 'uniform'\)"
    ):
        TeacherCache.open(path, tail="spread")
    dense = write_cache(tmp_path / "d", logits, kind="dense", fingerprint="f", teacher_sha256="h")
    got = TeacherCache.open(dense, tail="bucket").lookup(torch.tensor([0]))
    assert isinstance(got, torch.Tensor) and got.shape == (1, NUM_CLASSES)  # dense ignores it


def test_writer_keeps_the_first_classes_of_a_padded_teacher(tmp_path, logits):
    """teacher_classes=K + 3: the first K logits are stored, top-k renormalised over them."""
    padded = torch.cat([logits, torch.full((NUM_SAMPLES, 3), 5.0)], dim=-1)
    common = {"num_samples": NUM_SAMPLES, "num_classes": NUM_CLASSES, "fingerprint": "f"}
    with CacheWriter(
        tmp_path / "c", kind="topk", k=3, dtype="float32", teacher_sha256="h",
        teacher_classes=NUM_CLASSES + 3, **common,
    ) as writer:  # fmt: skip
        with pytest.raises(ValueError, match=r"teacher_classes\) = \(2, 15\)"):
            writer.write(torch.arange(2), logits[:2])
        writer.write(torch.arange(NUM_SAMPLES), padded)
        writer.commit()
    got = TeacherCache.open(tmp_path / "c").lookup(torch.arange(NUM_SAMPLES))
    kept, logprob, tail = exact_reference(logits.numpy(), 3)
    np.testing.assert_array_equal(got.index.numpy(), kept)
    np.testing.assert_allclose(got.logprob.numpy(), logprob, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.tail.numpy(), tail, rtol=1e-5)
    assert TeacherCache.open(tmp_path / "c").manifest.teacher_config == {"teacher_output_rows": 15}
    with pytest.raises(
        ValueError, match=r"teacher_classes=11 must be an integer >= num_classes=12"
    ):
        CacheWriter(tmp_path / "d", kind="dense", teacher_sha256="h", teacher_classes=11, **common)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
