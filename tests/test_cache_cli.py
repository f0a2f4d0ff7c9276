"""softlabel-cache end to end on digits, and the checks made before a cache is trained on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from softlabel.cache import TeacherCache, open_for_datamodule, write_cache
from softlabel.cache_cli import CONF_DIR, build_cache


def cache_config(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("cache", overrides=["data=digits", "teacher=mlp_small", *overrides])


@pytest.fixture(scope="module")
def digits_setup(tmp_path_factory):
    """A random-weight mlp_small teacher saved to disk, its data module and its full-data logits."""
    from softlabel.modules.build import build_datamodule, build_model

    cfg = cache_config("out=unused", "teacher.checkpoint=unused")
    datamodule = build_datamodule(cfg)
    teacher = build_model(cfg.teacher.model, datamodule).eval()
    checkpoint = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save(teacher.state_dict(), checkpoint)
    dataset = datamodule.full_dataset()
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        logits = teacher(x)
    return checkpoint, datamodule, logits


def test_dense_cache_holds_the_teacher_logits_by_index(tmp_path, digits_setup):
    checkpoint, datamodule, logits = digits_setup
    cfg = cache_config(
        f"teacher.checkpoint={checkpoint}",
        f"out={tmp_path / 'c'}",
        "batch_size=500",
        "progress=false",
    )
    path = build_cache(cfg)
    cache = open_for_datamodule(path, datamodule)
    assert (len(cache), cache.num_classes, cache.kind) == (1797, 10, "dense")
    index = torch.tensor([1796, 0, 512, 3])
    expected = logits[index].numpy().astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(cache.lookup(index).numpy(), expected, rtol=1e-3, atol=1e-3)
    from softlabel.modules.checkpoints import file_sha256

    assert cache.teacher_sha256 == file_sha256(checkpoint)
    assert cache.manifest.teacher_config["checkpoint"] == str(checkpoint)


def test_topk_cache_keeps_the_teacher_top_classes(tmp_path, digits_setup):
    checkpoint, datamodule, logits = digits_setup
    cfg = cache_config(
        f"teacher.checkpoint={checkpoint}",
        f"out={tmp_path / 'c'}",
        "kind=topk",
        "k=3",
        "progress=false",
    )
    cache = TeacherCache.open(build_cache(cfg), fingerprint=datamodule.fingerprint)
    kept = np.load(cache.path / "topk_index.npy")
    assert kept.shape == (1797, 3)
    assert (np.sort(kept, 1) == np.sort(logits.topk(3, -1).indices.numpy(), 1)).mean() > 0.999


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (["out=x"], ValueError, "teacher.checkpoint is not set"),
        (
            ["teacher.checkpoint=/no/such/file.pt", "out=x"],
            FileNotFoundError,
            "teacher checkpoint not found",
        ),
        (
            ["teacher=cached", "teacher.cache=x", "out=x"],
            ValueError,
            r"softlabel-cache runs a teacher model.*not teacher=cached",
        ),
        (["teacher.checkpoint=t.pt"], ValueError, "out is not set"),
        (
            ["teacher.checkpoint=t.pt", "out=x", "kind=sparse"],
            ValueError,
            "kind='sparse' is not allowed",
        ),
        (["teacher.checkpoint=t.pt", "out=x", "threads=0"], ValueError, r"threads=0; allowed"),
    ],
)
def test_cli_refuses_bad_configs_before_running_the_teacher(overrides, error, message):
    with pytest.raises(error, match=message):
        build_cache(cache_config(*overrides))


def test_cache_for_other_data_or_preprocessing_is_refused(tmp_path, digits_setup):
    from softlabel.modules.build import build_datamodule

    checkpoint, datamodule, logits = digits_setup
    path = build_cache(
        cache_config(f"teacher.checkpoint={checkpoint}", f"out={tmp_path / 'c'}", "progress=false")
    )
    other_split = build_datamodule(cache_config("data.seed=1", "out=x", "teacher.checkpoint=x"))
    assert other_split.fingerprint == datamodule.fingerprint
    with pytest.raises(ValueError, match="inputs_fingerprint mismatch"):
        open_for_datamodule(path, other_split)
    for overrides in (["data.normalize=feature"], ["data.min_std=0.01"]):
        other_preprocessing = build_datamodule(
            cache_config(*overrides, "out=x", "teacher.checkpoint=x")
        )
        with pytest.raises(ValueError, match="inputs_fingerprint mismatch"):
            open_for_datamodule(path, other_preprocessing)
    other_data = build_datamodule(cache_config("data=synthetic", "out=x", "teacher.checkpoint=x"))
    with pytest.raises(ValueError, match="fingerprint mismatch: the cache has fingerprint='9"):
        open_for_datamodule(path, other_data)


def test_random_augmentation_is_refused_unless_allowed(tmp_path):
    from softlabel.data import ArraySource, SoftLabelDataModule

    rng = np.random.default_rng(0)
    source = ArraySource("tiny_images", rng.random((30, 3, 4, 4)), np.arange(30) % 3, 3, (3, 4, 4))
    augmented = SoftLabelDataModule(source, augment=True, batch_size=8)
    assert augmented.has_random_augmentation
    path = write_cache(
        tmp_path / "c",
        torch.randn(30, 3),
        kind="dense",
        fingerprint=augmented.fingerprint,
        teacher_sha256="h",
    )
    with pytest.raises(ValueError, match="random augmentation.*teacher.allow_augmentation=true"):
        open_for_datamodule(path, augmented)
    assert len(open_for_datamodule(path, augmented, allow_augmentation=True)) == 30
    plain = SoftLabelDataModule(source, augment=False, batch_size=8)
    assert len(open_for_datamodule(path, plain)) == 30


def test_training_from_a_topk_cache_reads_the_tail_bucket(tmp_path):
    """teacher=cached on a top-k cache: kd trains on TopKLogits (tail=bucket, the default);
    dkd, which needs every logit, says to set teacher.tail=uniform, and trains with it."""
    from train_configs import QUICK, compose_train

    from softlabel.modules.build import build_datamodule, build_reference_provider
    from softlabel.targets import TopKLogits
    from softlabel.train import train

    path = tmp_path / "cache"
    dev = [*QUICK, "trainer.fast_dev_run=2", "teacher=cached", f"teacher.cache={path}"]
    cfg = compose_train(*dev, "target=kd")
    assert cfg.teacher.tail == "bucket"
    datamodule = build_datamodule(cfg)
    write_cache(
        path,
        torch.randn(len(datamodule.source), 10, generator=torch.Generator().manual_seed(0)) * 3,
        kind="topk",
        k=3,
        fingerprint=datamodule.fingerprint,
        teacher_sha256="0" * 64,
    )
    provider, _ = build_reference_provider(cfg, "teacher_logits", datamodule)
    reference = provider(torch.zeros(2, 64), torch.tensor([0, 5]))
    assert isinstance(reference, TopKLogits) and reference.index.shape == (2, 3)
    assert reference.tail.dtype == torch.float32 and torch.isfinite(reference.tail).all()
    record = train(cfg, tmp_path / "kd")
    assert record["method"] == "kd" and record["global_step"] == 2
    with pytest.raises(ValueError, match="DecoupledTeacher needs the teacher's logits over every"):
        train(compose_train(*dev, "target=dkd"), tmp_path / "dkd")
    uniform = compose_train(*dev, "target=dkd", "teacher.tail=uniform")
    dense, _ = build_reference_provider(uniform, "teacher_logits", datamodule)
    assert dense(torch.zeros(2, 64), torch.tensor([0, 5])).shape == (2, 10)
    assert train(uniform, tmp_path / "dkd_uniform")["global_step"] == 2
