"""softlabel-train end to end (fast_dev_run) with the divergence, standardization, DKD and
label-relaxation targets: cached teacher logits for the teacher targets, none for relax."""

from __future__ import annotations

import pytest
import torch
from train_configs import QUICK, compose_train

from softlabel.train import train

DEV = [*QUICK, "trainer.fast_dev_run=2"]


@pytest.fixture(scope="module")
def teacher_cache(tmp_path_factory):
    """A dense cache of random teacher logits for the digits data of the quick config."""
    cache_module = pytest.importorskip("softlabel.cache")
    from softlabel.modules.build import build_datamodule

    path = tmp_path_factory.mktemp("cache") / "digits"
    datamodule = build_datamodule(compose_train(*DEV))
    logits = torch.randn(len(datamodule.source), 10, generator=torch.Generator().manual_seed(0))
    cache_module.write_cache(
        path, logits, kind="dense", fingerprint=datamodule.fingerprint, teacher_sha256="0" * 64
    )
    return path


@pytest.mark.parametrize("target", ["kd_reverse", "kd_jsd", "kd_tvd", "kd_std", "dkd"])
def test_teacher_targets_train_on_a_cached_teacher(target, teacher_cache, tmp_path):
    cfg = compose_train(
        *DEV, f"target={target}", "teacher=cached", f"teacher.cache={teacher_cache}"
    )
    record = train(cfg, tmp_path)
    assert record["method"] == target and record["target"]["name"] == target
    assert record["teacher_cache"] == str(teacher_cache) and record["global_step"] == 2
    assert 0.0 <= record["last"]["val/acc"] <= 1.0


def test_label_relaxation_trains_without_a_reference(tmp_path):
    record = train(compose_train(*DEV, "target=relax"), tmp_path)
    assert record["method"] == "relax" and record["target"] == {"name": "relax", "alpha": 0.1}
    assert record["global_step"] == 2
