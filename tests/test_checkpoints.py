"""Checkpoint loading (teachers / previous models) and exact resume."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
from hydra import compose, initialize_config_dir

from softlabel.models import MLP
from softlabel.modules import check_output_dim, file_sha256, load_weights
from softlabel.train import CONF_DIR, train

FAST = [
    "data.subset=200",
    "student.hidden=[16]",
    "callbacks.progress_bar.refresh_rate=0",
    "trainer.enable_model_summary=false",
    "trainer.num_sanity_val_steps=0",
    "trainer.max_epochs=2",
]


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=[*FAST, *overrides])


def test_load_plain_and_lightning_state_dicts(tmp_path):
    source = MLP(input_shape=(6,), num_classes=3, hidden=(5,))
    plain = tmp_path / "plain.pt"
    torch.save(source.state_dict(), plain)
    lightning_style = tmp_path / "run.ckpt"
    state = {f"student.{k}": v for k, v in source.state_dict().items()}
    state["reference_provider.model.w"] = torch.zeros(1)
    torch.save({"epoch": 3, "state_dict": state}, lightning_style)
    for path in (plain, lightning_style):
        target = MLP(input_shape=(6,), num_classes=3, hidden=(5,))
        load_weights(target, path, role="teacher")
        for a, b in zip(target.state_dict().values(), source.state_dict().values()):
            assert torch.equal(a, b)
    assert file_sha256(plain) == hashlib.sha256(plain.read_bytes()).hexdigest()


def test_load_errors_name_path_role_and_mismatch(tmp_path):
    model = MLP(input_shape=(6,), num_classes=3, hidden=(5,))
    with pytest.raises(FileNotFoundError, match=r"teacher checkpoint not found: .*nope\.ckpt"):
        load_weights(model, tmp_path / "nope.ckpt")
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(
        ValueError, match=r"previous checkpoint .*corrupt\.ckpt.* could not be read"
    ):
        load_weights(model, corrupt, role="previous")
    wider = tmp_path / "wider.pt"
    torch.save(MLP(input_shape=(6,), num_classes=3, hidden=(9,)).state_dict(), wider)
    with pytest.raises(
        ValueError, match=r"shape mismatches: .*checkpoint \(9, 6\) vs model \(5, 6\)"
    ):
        load_weights(model, wider)
    deeper = tmp_path / "deeper.pt"
    torch.save(MLP(input_shape=(6,), num_classes=3, hidden=(5, 5)).state_dict(), deeper)
    with pytest.raises(ValueError, match=r"teacher checkpoint .*deeper\.pt.*unexpected keys"):
        load_weights(model, deeper)
    with pytest.raises(
        ValueError, match="teacher outputs 3 classes but the data has num_classes=10"
    ):
        check_output_dim(model, (6,), 10)
    check_output_dim(model, (6,), 3)


def _student_weights(path: str) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("student.")}


def _every_epoch(dirpath: str) -> list[str]:
    """An extra checkpoint per epoch, to resume from the middle of a run."""
    return [
        "+callbacks.every._target_=lightning.pytorch.callbacks.ModelCheckpoint",
        f"+callbacks.every.dirpath={dirpath}",
        "+callbacks.every.filename='{epoch}'",
        "+callbacks.every.save_top_k=-1",
        "+callbacks.every.mode=max",  # a distinct state key from the model-selection checkpoint
        "+callbacks.every.auto_insert_metric_name=false",
    ]


def _resume_matches(tmp_path, batch_size: int) -> dict[str, float]:
    straight = tmp_path / "straight"
    train(
        _compose(f"data.batch_size={batch_size}", *_every_epoch(str(straight / "every"))), straight
    )
    resumed = tmp_path / "resumed"
    train(
        _compose(f"data.batch_size={batch_size}", f"ckpt_path={straight / 'every' / '0.ckpt'}"),
        resumed,
    )
    a = _student_weights(os.path.join(straight, "checkpoints", "last.ckpt"))
    b = _student_weights(os.path.join(resumed, "checkpoints", "last.ckpt"))
    assert set(a) == set(b)
    return {k: (a[k] - b[k]).abs().max().item() for k in a}


def test_resume_with_shuffled_batches_continues_exactly(tmp_path):
    # Several shuffled batches per epoch: the resumed run must restore weights, optimizer,
    # scheduler, step count and the data order (the sampler is seeded by seed + epoch).
    diffs = _resume_matches(tmp_path, batch_size=32)
    assert max(diffs.values()) < 1e-6, diffs
