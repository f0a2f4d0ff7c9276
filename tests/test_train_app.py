"""The training app: every target source end to end, clear errors, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from train_configs import QUICK, compose_train

from softlabel.models import build_model
from softlabel.train import CONF_DIR, train

REPO = os.path.dirname(CONF_DIR)
DEV = [*QUICK, "trainer.fast_dev_run=2"]


_compose = compose_train


def _save_model(cfg_node, path, num_classes: int = 10) -> str:
    torch.manual_seed(1)
    torch.save(build_model(cfg_node, (64,), num_classes).state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def small_mlp(tmp_path_factory):
    """A plain state_dict of an MLP with hidden=[16] on digits (64 inputs, 10 classes)."""
    path = tmp_path_factory.mktemp("models") / "mlp16.pt"
    return _save_model(_compose("student.hidden=[16]").student, path)


@pytest.mark.parametrize("target", ["hard", "ls", "ls_prior"])
def test_fast_dev_run_without_reference(target, tmp_path):
    record = train(_compose(*DEV, f"target={target}"), tmp_path)
    assert record["method"] == target and record["target"]["name"] == target
    assert 0.0 <= record["last"]["val/acc"] <= 1.0 and record["global_step"] == 2


def test_ls_prior_uses_train_class_counts(tmp_path):
    from softlabel.modules.build import build_datamodule, build_loss

    cfg = _compose(*DEV, "target=ls_prior")
    datamodule = build_datamodule(cfg)
    source = build_loss(cfg, datamodule).source
    counts = torch.as_tensor(datamodule.class_counts, dtype=torch.float64)
    prior = getattr(source, "prior", None)
    assert prior is not None
    torch.testing.assert_close(
        torch.as_tensor(prior, dtype=torch.float64), counts / counts.sum(), atol=1e-6, rtol=0
    )


def test_kd_with_live_teacher_keeps_teacher_frozen_and_out_of_checkpoint(small_mlp, tmp_path):
    before = torch.load(small_mlp)
    overrides = [
        *QUICK,
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "target=kd",
        "teacher=mlp",
    ]
    record = train(
        _compose(*overrides, "teacher.model.hidden=[16]", f"teacher.checkpoint={small_mlp}"),
        tmp_path,
    )
    assert record["teacher_checkpoint"] == small_mlp and len(record["teacher_sha256"]) == 64
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert state and all(k.startswith("student.") for k in state), sorted(state)
    for key, value in torch.load(small_mlp).items():  # the teacher file's weights, unchanged
        assert torch.equal(value, before[key])
    assert record["best"]["epoch"] == 0 and record["best_checkpoint"] == os.path.join(
        "checkpoints", "best.ckpt"
    )


def test_kd_with_cached_teacher(tmp_path):
    cache_module = pytest.importorskip("softlabel.cache")
    from softlabel.modules.build import build_datamodule

    cfg = _compose(*DEV, "target=kd", "teacher=cached", f"teacher.cache={tmp_path / 'cache'}")
    datamodule = build_datamodule(cfg)
    logits = torch.randn(len(datamodule.source), 10)
    cache_module.write_cache(
        tmp_path / "cache",
        logits,
        kind="dense",
        fingerprint=datamodule.fingerprint,
        teacher_sha256="0" * 64,
    )
    record = train(cfg, tmp_path / "run")
    assert record["teacher_cache"] == str(tmp_path / "cache") and record["method"] == "kd"


def test_reloop_with_previous_model_defaults_to_student_architecture(small_mlp, tmp_path):
    record = train(_compose(*DEV, "target=reloop", f"previous.checkpoint={small_mlp}"), tmp_path)
    assert record["method"] == "reloop" and record["previous_checkpoint"] == small_mlp


def test_teacher_then_student_two_step_flow(tmp_path):
    no_width = [o for o in QUICK if not o.startswith("student.")]  # keep mlp_small's widths
    teacher_overrides = [
        *no_width,
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "target=hard",
    ]
    teacher = train(_compose(*teacher_overrides, "student=mlp_small"), tmp_path / "teacher")
    ckpt = tmp_path / "teacher" / teacher["best_checkpoint"]
    record = train(
        _compose(*DEV, "target=kd", "teacher=mlp_small", f"teacher.checkpoint={ckpt}"),
        tmp_path / "kd",
    )
    assert record["teacher_checkpoint"] == str(ckpt)


def test_teacher_dtype_holds_the_frozen_teacher_in_that_dtype(small_mlp, tmp_path):
    """teacher.dtype=bfloat16 casts a classifier teacher too (it was silently ignored):
    the batch is cast to the teacher's dtype and its logits back."""
    from softlabel.modules.build import build_datamodule, build_reference_provider

    overrides = [*DEV, "target=kd", "teacher=mlp", "teacher.model.hidden=[16]"]
    cfg = _compose(*overrides, f"teacher.checkpoint={small_mlp}", "+teacher.dtype=bfloat16")
    provider, _ = build_reference_provider(cfg, "teacher_logits", build_datamodule(cfg))
    assert {p.dtype for p in provider.model.parameters()} == {torch.bfloat16}
    logits = provider(torch.randn(3, 64), torch.arange(3))
    assert logits.dtype == torch.float32 and logits.shape == (3, 10)
    assert train(cfg, tmp_path)["global_step"] == 2


def test_bad_teacher_configs_fail_before_training(small_mlp, tmp_path):
    with pytest.raises(ValueError, match="needs a teacher, but teacher=none"):
        train(_compose(*DEV, "target=kd"), tmp_path)
    with pytest.raises(FileNotFoundError, match=r"teacher checkpoint not found: .*missing\.ckpt"):
        train(
            _compose(
                *DEV, "target=kd", "teacher=mlp", f"teacher.checkpoint={tmp_path / 'missing.ckpt'}"
            ),
            tmp_path,
        )
    with pytest.raises(
        ValueError, match=r"does not match the configured teacher architecture .*shape mismatches"
    ):
        train(
            _compose(*DEV, "target=kd", "teacher=mlp_large", f"teacher.checkpoint={small_mlp}"),
            tmp_path,
        )
    five = _save_model(_compose("student.hidden=[16]").student, tmp_path / "five.pt", num_classes=5)
    overrides = [
        *DEV,
        "target=kd",
        "teacher=mlp",
        "teacher.model.hidden=[16]",
        f"teacher.checkpoint={five}",
    ]
    with pytest.raises(
        ValueError, match=r"shape mismatches: net\.\d\.weight: checkpoint \(5, 16\)"
    ):
        train(_compose(*overrides), tmp_path)
    with pytest.raises(
        ValueError, match="teacher outputs 5 classes but the data has num_classes=10"
    ):
        train(_compose(*overrides, "+teacher.model.num_classes=5"), tmp_path)
    with pytest.raises(ValueError, match=r"previous\.checkpoint is not set"):
        train(_compose(*DEV, "target=reloop"), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    return subprocess.run(
        [sys.executable, "-m", "softlabel.train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_cli_cfg_job_and_override_typo(tmp_path):
    shown = _cli("--cfg", "job", "target=kd", cwd=tmp_path)
    assert shown.returncode == 0 and "_target_: softlabel.targets.Teacher" in shown.stdout
    typo = _cli("trainer.max_epoch=1", cwd=tmp_path)
    assert (
        typo.returncode != 0
        and "trainer.max_epoch" in typo.stderr
        and "Traceback" not in typo.stderr
    )


def _check_metrics(run, method: str, target: dict) -> None:
    metrics = json.loads((run / "metrics.json").read_text())
    required = {
        "method",
        "seed",
        "task",
        "wall_time_s",
        "cpu_time_s",
        "data",
        "student",
        "target",
        "last",
        "best",
    }
    assert required | {"monitor", "best_checkpoint", "label_noise", "num_params"} <= set(metrics)
    assert (metrics["method"], metrics["seed"], metrics["data"], metrics["student"]) == (
        method,
        0,
        "digits",
        "mlp",
    )
    assert metrics["target"] == {"name": method, **target} and metrics["monitor"] == "val/nll"
    assert metrics["num_params"] == 64 * 16 + 16 + 16 * 10 + 10
    for part in ("last", "best"):
        for split in ("val", "test"):
            assert (
                0.0 <= metrics[part][f"{split}/acc"] <= 1.0
                and 0.0 <= metrics[part][f"{split}/ece"] <= 1.0
            )
            assert metrics[part][f"{split}/nll"] > 0.0
    assert metrics["best"]["epoch"] in (0, 1) and metrics["wall_time_s"] > 0
    assert metrics["cpu_time_s"] > 0
    assert metrics["label_noise"]["num_flipped"] == 0
    for path in ("checkpoints/best.ckpt", "checkpoints/last.ckpt", "logs/metrics.csv"):
        assert (run / path).is_file(), path


def test_cli_multirun_end_to_end(tmp_path):
    args = ["-m", "target=hard,ls", *QUICK, "trainer.max_epochs=2", "hydra.sweep.dir=sweep"]
    done = _cli(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    _check_metrics(tmp_path / "sweep" / "0", "hard", {})
    _check_metrics(tmp_path / "sweep" / "1", "ls", {"smoothing": 0.1})
    assert (tmp_path / "sweep" / "1" / ".hydra" / "config.yaml").is_file()


def test_save_predictions_writes_the_test_probabilities_of_both_checkpoints(tmp_path):
    import numpy as np

    from softlabel.modules.build import build_datamodule

    # 6 epochs: the val-selected epoch differs from the last one in this run
    cfg = _compose(*QUICK, "trainer.max_epochs=6", "save_predictions=true", "threads=1")
    record = train(cfg, tmp_path)
    files = {"best": "predictions_test.npz", "last": "predictions_test_last.npz"}
    assert record["predictions"] == files
    datamodule = build_datamodule(cfg)
    accuracies = {}
    for which, name in files.items():
        saved = np.load(tmp_path / name)
        probs, target, index = saved["probs"], saved["target"], saved["index"]
        np.testing.assert_array_equal(np.sort(index), datamodule.split.test)
        assert probs.shape == (len(index), datamodule.num_classes)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        # the same weights that metrics.json reports as "best" / "last" on test
        accuracies[which] = float((probs.argmax(axis=1) == target).mean())
        assert accuracies[which] == pytest.approx(record[which]["test/acc"], abs=1e-6)
    best_probs = np.load(tmp_path / files["best"])["probs"]
    last_probs = np.load(tmp_path / files["last"])["probs"]
    assert (record["best"]["epoch"] == record["epochs"] - 1) == np.allclose(best_probs, last_probs)
    assert torch.get_num_threads() == 1
