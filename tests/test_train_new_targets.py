"""The training app with the teacher-free and correlation targets: ols, tf_kd, ls_adaptive
without a teacher, dist with a live and with a cached teacher."""

from __future__ import annotations

import pytest
import torch
from train_configs import QUICK, compose_train

from softlabel.models import build_model
from softlabel.train import train

DEV = [*QUICK, "trainer.fast_dev_run=2"]


@pytest.mark.parametrize("target", ["tf_kd", "ls_adaptive", "ls_confidence", "ols"])
def test_targets_without_teacher(target, tmp_path):
    record = train(compose_train(*DEV, f"target={target}"), tmp_path)
    assert record["method"] == target and record["target"]["name"] == target
    assert record["global_step"] == 2 and 0.0 <= record["last"]["val/acc"] <= 1.0


def test_ols_statistics_are_in_the_checkpoint(tmp_path):
    overrides = [*QUICK, "trainer.max_epochs=2", "trainer.limit_train_batches=2", "target=ols"]
    overrides.append("trainer.log_every_n_steps=1")
    train(compose_train(*overrides), tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    extra = state["loss.source._extra_state"]
    assert extra["epochs"] == 2 and extra["num_classes"] == 10
    torch.testing.assert_close(extra["prior"].sum(dim=1), torch.ones(10, dtype=torch.float64))


def test_dist_with_live_teacher(tmp_path):
    cfg = compose_train(*DEV, "target=dist", "teacher=mlp", "teacher.model.hidden=[16]")
    torch.manual_seed(1)
    path = tmp_path / "teacher.pt"
    torch.save(build_model(cfg.teacher.model, (64,), 10).state_dict(), path)
    record = train(
        compose_train(
            *DEV,
            "target=dist",
            "teacher=mlp",
            "teacher.model.hidden=[16]",
            f"teacher.checkpoint={path}",
        ),
        tmp_path / "run",
    )
    assert record["method"] == "dist" and record["teacher_checkpoint"] == str(path)


def test_dist_with_cached_teacher(tmp_path):
    cache_module = pytest.importorskip("softlabel.cache")
    from softlabel.modules.build import build_datamodule

    cfg = compose_train(
        *DEV, "target=dist", "teacher=cached", f"teacher.cache={tmp_path / 'cache'}"
    )
    datamodule = build_datamodule(cfg)
    cache_module.write_cache(
        tmp_path / "cache",
        torch.randn(len(datamodule.source), 10),
        kind="dense",
        fingerprint=datamodule.fingerprint,
        teacher_sha256="0" * 64,
    )
    record = train(cfg, tmp_path / "run")
    assert record["teacher_cache"] == str(tmp_path / "cache") and record["method"] == "dist"
