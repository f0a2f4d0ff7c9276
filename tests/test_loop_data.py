"""Click-log generator (seeded, drifting), the CTR log loader, the digits stream and CTR models."""

import hashlib

import numpy as np
import pandas as pd
import pytest
import torch

from softlabel.loop.clicklog import ClickLogGenerator, clicklog_stream
from softlabel.loop.ctr_log import CTRColumnSpec, ctr_log_stream, stable_bucket
from softlabel.loop.digits import digits_stream
from softlabel.models.ctr import EmbeddingMLP, HashedLogisticRegression

SMALL = {
    "num_users": 40,
    "num_items": 30,
    "num_categories": 5,
    "num_contexts": 3,
    "samples_per_day": 300,
}


def test_generator_is_deterministic_by_seed_and_random_access():
    a, b = ClickLogGenerator(seed=3, **SMALL), ClickLogGenerator(seed=3, **SMALL)
    day3_first = a.day(3)
    b.day(1)
    pd.testing.assert_frame_equal(day3_first, b.day(3))
    assert not ClickLogGenerator(seed=4, **SMALL).day(3).equals(day3_first)
    assert day3_first["sample_id"].tolist() == list(range(600, 900))  # stable global ids


def test_generator_drifts():
    generator = ClickLogGenerator(
        seed=0, user_drift=0.3, item_drift=0.3, popularity_drift=0.3, **SMALL
    )
    users1, items1, pop1 = generator.state(1)
    users5, items5, pop5 = generator.state(5)
    # AR(1) with rho = sqrt(1 - 0.3^2): corr(day 1, day 5) ~ rho^4 = 0.83 < 1, variance kept
    corr = np.corrcoef(users1.ravel(), users5.ravel())[0, 1]
    assert 0.6 < corr < 0.95
    assert np.corrcoef(pop1, pop5)[0, 1] < 0.95
    request = (np.arange(40), np.arange(40) % 30, np.zeros(40, dtype=int))
    p1, p5 = generator.click_probability(1, *request), generator.click_probability(5, *request)
    assert np.abs(p1 - p5).mean() > 0.02  # the same requests get other click rates
    frozen = ClickLogGenerator(
        seed=0, user_drift=0.0, item_drift=0.0, popularity_drift=0.0, **SMALL
    )
    np.testing.assert_allclose(
        frozen.click_probability(1, *request), frozen.click_probability(5, *request)
    )


def test_clicklog_stream_layout():
    stream = clicklog_stream(num_days=3, holdout_per_day=20, buckets_per_field=64, seed=1, **SMALL)
    assert stream.task == "binary" and len(stream.chunks) == 3 and len(stream.holdout) == 60
    assert stream.input_shape == (4,)
    x = stream.chunks[0].x
    assert x.min() >= 0 and x.max() < 4 * 64
    assert ((x[:, 1] >= 64) & (x[:, 1] < 128)).all()  # field j uses buckets [64 j, 64 (j + 1))
    assert stream.holdout.ids.min() == 3 * 300


def test_stable_bucket_is_blake2b_of_field_and_token():
    expected = (
        int.from_bytes(hashlib.blake2b(b"site\x1fabc", digest_size=8).digest(), "little") % 1000
    )
    assert stable_bucket("site", "abc", 1000) == expected
    assert (
        stable_bucket("site", 5.0, 97)
        == stable_bucket("site", 5, 97)
        == stable_bucket("site", "5", 97)
    )
    assert stable_bucket("site", None, 97) == stable_bucket("site", float("nan"), 97)


def _log_frame():
    return pd.DataFrame(
        {
            "day": [1, 1, 1, 1, 2, 2, 2, 3, 3, 3],
            "site": ["a", "b", "a", None, "c", "a", "b", "b", "a", "c"],
            "count": [0.0, 1.0, 3.0, 7.0, 100.0, None, 1.0, 0.0, 2.0, 5.0],
            "click": [0, 1, 0, 1, 1, 0, 0, 1, 0, 1],
        }
    )


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_ctr_log_loader(tmp_path, suffix):
    frame = _log_frame()
    path = tmp_path / f"log.{suffix}"
    frame.to_csv(path, index=False) if suffix == "csv" else frame.to_parquet(path)
    stream = ctr_log_stream(
        path,
        label="click",
        categorical=["site"],
        numeric=["count"],
        buckets_per_field=50,
        holdout_fraction=0.2,
    )
    in_holdout = set(stream.holdout.ids.tolist())
    assert len(stream.chunks) == 3
    for chunk, day in zip(stream.chunks, (1, 2, 3)):
        expected_ids = [i for i in np.flatnonzero(frame["day"] == day) if i not in in_holdout]
        assert chunk.ids.tolist() == expected_ids  # row numbers are the ids
        rows = frame.iloc[chunk.ids]
        assert chunk.x[:, 0].tolist() == [stable_bucket("site", v, 50) for v in rows["site"]]
        np.testing.assert_array_equal(chunk.y, rows["click"].to_numpy())
    # numeric: log1p, then standardised with the first chunk's statistics (missing -> 0)
    first = np.log1p(frame.iloc[stream.chunks[0].ids]["count"].to_numpy())
    mean, std = first.mean(), first.std()
    day2 = frame.iloc[stream.chunks[1].ids]["count"].to_numpy()
    expected = np.where(np.isnan(day2), 0.0, (np.log1p(day2) - mean) / std)
    np.testing.assert_allclose(stream.chunks[1].x[:, 1], expected, rtol=1e-5)
    np.testing.assert_allclose(stream.chunks[0].x[:, 1].mean(), 0.0, atol=1e-6)


def test_ctr_log_loader_errors(tmp_path):
    path = tmp_path / "log.csv"
    _log_frame().to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"columns \['nope'\] not in"):
        ctr_log_stream(path, label="click", categorical=["nope"])
    with pytest.raises(FileNotFoundError):
        ctr_log_stream(tmp_path / "missing.csv", label="click", categorical=["site"])
    with pytest.raises(ValueError, match="exactly one of day_column and timestamp_column"):
        CTRColumnSpec(label="click", categorical=["site"], day_column=None)


def test_ctr_log_timestamp_chunks(tmp_path):
    frame = _log_frame().drop(columns="day")
    frame["ts"] = [0, 10, 20, 30, 86_400, 86_500, 86_600, 172_800, 172_900, 173_000]
    path = tmp_path / "log.parquet"
    frame.to_parquet(path)
    stream = ctr_log_stream(
        path,
        label="click",
        categorical=["site"],
        day_column=None,
        timestamp_column="ts",
        holdout_fraction=0.1,
    )
    days = [sorted(set((frame["ts"].to_numpy()[c.ids] // 86_400).tolist())) for c in stream.chunks]
    assert days == [[0], [1], [2]]
    assert sorted(
        np.concatenate([*(c.ids for c in stream.chunks), stream.holdout.ids]).tolist()
    ) == list(range(10))


def test_digits_stream_prior_shift():
    stream = digits_stream(num_chunks=4, shift="prior", strength=2.0, seed=0)
    counts = np.stack([np.bincount(c.y, minlength=10) / len(c) for c in stream.chunks])
    assert np.abs(counts[0] - counts[2]).sum() > 0.5  # chunks have clearly different class mixes
    all_ids = np.concatenate([c.ids for c in stream.chunks] + [stream.holdout.ids])
    assert sorted(all_ids.tolist()) == list(range(1797))


def test_ctr_models_shapes_and_linear_formula():
    x = torch.tensor([[0.0, 5.0, 0.5], [3.0, 9.0, -1.0]])  # two buckets fields, one numeric
    lr = HashedLogisticRegression((3,), 1, num_categorical=2, num_buckets=10)
    with torch.no_grad():
        lr.weights.weight.copy_(torch.arange(10.0).unsqueeze(1))
        lr.numeric.weight.fill_(2.0)
        lr.numeric.bias.zero_()
        lr.bias.fill_(0.5)
    torch.testing.assert_close(lr(x), torch.tensor([0.5 + 0 + 5 + 1.0, 0.5 + 3 + 9 - 2.0]))
    for fm in (False, True):
        out = EmbeddingMLP((3,), 1, num_categorical=2, num_buckets=10, fm=fm)(x)
        assert out.shape == (2,)
    with pytest.raises(ValueError, match="bucket ids must lie in"):
        lr(torch.tensor([[10.0, 0.0, 0.0]]))
