"""SoftLabelDataModule: splits, label noise, normalisation, indices, loaders."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from softlabel.data import ArraySource, SoftLabelDataModule, digits, synthetic


@pytest.fixture(scope="module")
def source():
    return digits()


def make(source, **kwargs):
    dm = SoftLabelDataModule(source, **kwargs)
    dm.setup("fit")
    return dm


def test_split_is_disjoint_covers_everything_and_has_the_requested_sizes(source):
    dm = make(source)
    train, val, test = dm.split.train, dm.split.val, dm.split.test
    assert len(set(train) | set(val) | set(test)) == len(source) == 1797
    assert len(train) + len(val) + len(test) == 1797
    assert len(test) == round(0.15 * 1797) and len(val) == round(0.15 * 1797)
    assert dm.num_train == len(train) == 1797 - 2 * 270


def test_same_seed_same_split_other_seed_other_split(source):
    a, b, c = make(source, seed=1), make(source, seed=1), make(source, seed=2)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(a.split, name), getattr(b.split, name))
    assert not np.array_equal(a.split.test, c.split.test)
    assert a.split_fingerprint == b.split_fingerprint != c.split_fingerprint
    assert a.fingerprint == c.fingerprint == source.fingerprint


def test_split_is_stratified(source):
    dm = make(source, val_fraction=0.2, test_fraction=0.2)
    overall = np.bincount(source.y) / len(source)
    for indices in (dm.split.train, dm.split.val, dm.split.test):
        share = np.bincount(source.y[indices], minlength=10) / len(indices)
        assert np.abs(share - overall).max() < 0.01


def test_official_test_index_is_the_test_split():
    base = synthetic(num_samples=300, num_features=5, num_classes=3)
    official = np.arange(250, 300)
    with_test = ArraySource("s", base.X, base.y, 3, (5,), test_index=official)
    dm = make(with_test, val_fraction=0.2)
    np.testing.assert_array_equal(dm.split.test, official)
    assert len(dm.split.val) == 50 and len(dm.split.train) == 200


def test_items_carry_their_dataset_index_and_clean_values(source):
    dm = make(source, normalize=False)
    x, y, index = dm.split_dataset("val")[3]
    expected = dm.split.val[3]
    assert index.dtype == torch.int64 and int(index) == expected
    assert y.dtype == torch.int64 and int(y) == source.y[expected]
    assert x.dtype == torch.float32
    np.testing.assert_array_equal(x.numpy(), source.X[expected])
    full = dm.full_dataset()
    assert len(full) == len(source)
    assert [int(full[i][2]) for i in (0, 500, 1796)] == [0, 500, 1796]
    x_all, y_all, idx_all = next(iter(dm.predict_dataloader("all")))
    np.testing.assert_array_equal(idx_all.numpy(), np.arange(64))


def test_subset_keeps_original_indices(source):
    dm = make(source, subset=200, seed=3)
    indices = np.concatenate([dm.split.train, dm.split.val, dm.split.test])
    assert len(indices) == 200 and len(np.unique(indices)) == 200
    assert indices.max() > 200  # indices refer to the full dataset, not to the subset
    _, y, index = dm.split_dataset("train")[0]
    assert int(y) == source.y[int(index)]
    with pytest.raises(ValueError, match="subset=5000"):
        make(source, subset=5000)


@pytest.mark.parametrize("kind", ["symmetric", "pairwise"])
def test_label_noise_flips_the_requested_rate_on_train_only(source, kind):
    dm = make(source, label_noise={"kind": kind, "rate": 0.3}, seed=4)
    train = dm.split.train
    changed = dm.train_labels != source.y[train]
    assert changed.sum() == round(0.3 * len(train))
    np.testing.assert_array_equal(np.sort(train[changed]), dm.noisy_index)
    report = dm.noise_report
    assert report == {
        "kind": kind,
        "rate": 0.3,
        "num_flipped": int(changed.sum()),
        "fraction_flipped": changed.sum() / len(train),
        "num_train": len(train),
    }
    if kind == "pairwise":
        np.testing.assert_array_equal(dm.train_labels[changed], (source.y[train][changed] + 1) % 10)
    else:  # other classes, roughly uniform
        moved = (dm.train_labels[changed] - source.y[train][changed]) % 10
        assert moved.min() >= 1 and len(np.unique(moved)) == 9
    for split in ("val", "test", "all"):
        for _x, y, index in [dm.split_dataset(split)[i] for i in range(0, 50, 7)]:
            assert int(y) == source.y[int(index)]
    counts = np.bincount(dm.train_labels, minlength=10)
    np.testing.assert_array_equal(dm.class_counts, counts)
    assert not np.array_equal(counts, np.bincount(source.y[train], minlength=10))


def test_noise_is_seeded_and_accepts_a_dictconfig(source):
    config = OmegaConf.create({"kind": "symmetric", "rate": 0.2})
    a = make(source, label_noise=config, seed=5)
    b = make(source, label_noise={"kind": "symmetric", "rate": 0.2}, seed=5)
    np.testing.assert_array_equal(a.train_labels, b.train_labels)
    assert make(source).noise_report["num_flipped"] == 0
    with pytest.raises(ValueError, match="label_noise.kind='mixed'"):
        SoftLabelDataModule(source, label_noise={"kind": "mixed", "rate": 0.1})
    with pytest.raises(ValueError, match="label_noise.rate=1.5"):
        SoftLabelDataModule(source, label_noise={"kind": "symmetric", "rate": 1.5})


def test_normalisation_uses_train_statistics_only():
    image = digits(flat=False)
    dm = make(image)
    assert dm.normalization == "channel"
    train_x = image.X[dm.split.train]
    mean, std = train_x.mean(), train_x.std()
    x, _, index = dm.split_dataset("test")[0]
    np.testing.assert_allclose(x.numpy(), (image.X[int(index)] - mean) / std, rtol=1e-4, atol=1e-5)
    flat = make(digits())  # flat pixels: one mean / std per channel too (image_shape known)
    assert flat.normalization == "channel"
    x, _, index = flat.split_dataset("test")[0]
    np.testing.assert_allclose(x.numpy(), (digits().X[int(index)] - mean) / std, atol=1e-5)
    per_feature = make(digits(), normalize="feature")
    assert per_feature.normalization == "feature"
    column_mean = digits().X[per_feature.split.train].mean(axis=0)
    dataset = per_feature.split_dataset("train")
    batch = torch.stack([dataset[i][0] for i in range(per_feature.num_train)])
    np.testing.assert_allclose(batch.mean(0).numpy(), 0.0, atol=1e-4)
    x0, _, i0 = per_feature.split_dataset("val")[0]
    std0 = digits().X[per_feature.split.train].std(axis=0)
    std0 = np.where(std0 == 0, 1.0, np.maximum(std0, 1e-3))
    np.testing.assert_allclose(x0.numpy(), (digits().X[int(i0)] - column_mean) / std0, atol=1e-4)


def test_train_loader_is_shuffled_and_seeded(source):
    first = next(iter(make(source, seed=6).train_dataloader()))[2]
    again = next(iter(make(source, seed=6).train_dataloader()))[2]
    torch.testing.assert_close(first, again)
    assert not torch.equal(first, first.sort().values)
    val = next(iter(make(source).val_dataloader()))[2]
    torch.testing.assert_close(val, val.sort().values)


def test_properties_and_callable_or_config_sources():
    dm = SoftLabelDataModule(digits, batch_size=32)
    assert dm.num_classes == 10 and dm.input_shape == (64,) and dm.task == "multiclass"
    assert dm.name == "digits" and len(dm.class_counts) == 10
    assert dm.class_counts.sum() == dm.num_train and not dm.has_random_augmentation
    config = OmegaConf.create({"_target_": "softlabel.data.digits", "flat": False})
    assert SoftLabelDataModule(config).input_shape == (1, 8, 8)
    binary = SoftLabelDataModule(synthetic(200, 4, 2, task="binary"))
    assert binary.num_classes == 1 and binary.num_labels == 2 and len(binary.class_counts) == 2
    with pytest.raises(TypeError, match="source"):
        SoftLabelDataModule(42).setup()
    with pytest.raises(ValueError, match="val_fraction"):
        SoftLabelDataModule(digits, val_fraction=0.0).setup()
    with pytest.raises(ValueError, match="test_fraction"):
        SoftLabelDataModule(digits, val_fraction=0.5, test_fraction=0.6).setup()


def test_crop_flip_for_three_channel_images_and_no_augmentation_of_feature_vectors():
    with pytest.raises(ValueError, match="no image shape.*data.image_shape"):
        SoftLabelDataModule(synthetic(100, 4, 2), augment=True).setup()
    X = np.random.default_rng(0).random((40, 3, 8, 8), dtype=np.float32)
    images = ArraySource("rgb", X, np.arange(40) % 2, 2, (3, 8, 8))
    dm = make(images, augment=True, normalize=False)
    assert dm.has_random_augmentation and dm.augmentation == "crop_flip"
    x, _, index = dm.train_dataloader().dataset[0]
    original = torch.from_numpy(X[int(index)])
    padded = torch.nn.functional.pad(original, (4, 4, 4, 4))
    crops = [padded[:, t : t + 8, s : s + 8] for t in range(9) for s in range(9)]
    assert any(torch.equal(x, c) or torch.equal(x, c.flip(-1)) for c in crops)
    x_val, _, i_val = dm.split_dataset("val")[0]
    torch.testing.assert_close(x_val, torch.from_numpy(X[int(i_val)]))
