"""Checkpoint loading (teachers / previous models) and exact resume."""

from __future__ import annotations

import hashlib
import os
import zipfile

import pytest
import torch
from train_configs import QUICK, compose_train

from softlabel.models import MLP
from softlabel.modules import check_output_dim, file_sha256, load_weights
from softlabel.modules.build import build_datamodule, build_model, build_reference_provider
from softlabel.train import train

FAST = [*QUICK, "trainer.max_epochs=2"]


def _compose(*overrides: str):
    return compose_train(*FAST, *overrides)


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
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
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


class _WritesMarker:
    """Unpickling this runs code: it writes ``marker`` (what a malicious checkpoint would do)."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _crafted(path, weights, marker, legacy=False):
    payload = {"state_dict": {f"student.{k}": v for k, v in weights.items()}}
    payload["extra"] = _WritesMarker(marker)
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_crafted_pickle_is_refused_unless_trusted(tmp_path, legacy):
    source = MLP(input_shape=(6,), num_classes=3, hidden=(5,))
    marker = tmp_path / "marker"
    path = _crafted(tmp_path / "evil.ckpt", source.state_dict(), marker, legacy)
    model = MLP(input_shape=(6,), num_classes=3, hidden=(5,))
    with pytest.raises(
        ValueError,
        match=r"previous checkpoint .*evil\.ckpt.* \(from previous\.checkpoint\) could not be "
        r"read safely: .*exec.*set previous\.trust_checkpoint=true",
    ):
        load_weights(model, path, role="previous")
    assert not marker.exists()
    with pytest.raises(TypeError, match="trust_checkpoint must be true or false, got 'yes'"):
        load_weights(model, path, trust_checkpoint="yes")
    assert not marker.exists()
    load_weights(model, path, role="previous", trust_checkpoint=True)  # the user vouched
    assert marker.read_text() == "pwned"
    for a, b in zip(model.state_dict().values(), source.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("trust", [False, True])
def test_trust_checkpoint_comes_from_the_teacher_config(tmp_path, trust):
    cfg = _compose("target=kd", "teacher=mlp_small", f"teacher.trust_checkpoint={trust}")
    assert _compose("teacher=mlp_small", "teacher.checkpoint=x").teacher.trust_checkpoint is False
    assert _compose("previous=mlp_small").previous.trust_checkpoint is False
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    weights = build_model(cfg.teacher.model, datamodule).state_dict()
    marker = tmp_path / "marker"
    cfg.teacher.checkpoint = str(_crafted(tmp_path / "teacher.ckpt", weights, marker))
    if not trust:
        with pytest.raises(ValueError, match=r"set teacher\.trust_checkpoint=true"):
            build_reference_provider(cfg, "teacher_logits", datamodule)
        assert not marker.exists()
    else:
        provider, record = build_reference_provider(cfg, "teacher_logits", datamodule)
        assert provider is not None and record["teacher_checkpoint"] == cfg.teacher.checkpoint
        assert marker.exists()


def test_checkpoint_written_by_training_loads_with_the_safe_loader(tmp_path, monkeypatch):
    train(_compose("trainer.max_epochs=1"), tmp_path)
    calls = []
    real_load = torch.load

    def safe_only(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        assert kwargs.get("weights_only") is True, "a checkpoint was unpickled unsafely"
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", safe_only)
    for name in ("last.ckpt", "best.ckpt"):
        model = MLP(input_shape=(64,), num_classes=10, hidden=(16,))
        load_weights(model, tmp_path / "checkpoints" / name, role="previous")
    assert calls == [True, True]


def test_unreadable_files_name_the_file_role_and_key(tmp_path):
    model = MLP(input_shape=(6,), num_classes=3, hidden=(5,))
    text = tmp_path / "notes.txt"
    text.write_text("these are my notes, not weights\n")
    with pytest.raises(
        ValueError,
        match=r"teacher checkpoint .*notes\.txt.* \(from teacher\.checkpoint\) could not be read: "
        r"it is not a torch checkpoint .*b'these ar'.*set teacher\.checkpoint",
    ):
        load_weights(model, text)
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.ckpt.*the file is empty \(0 bytes\)"):
        load_weights(model, empty)
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save(model.state_dict(), run_dir / "checkpoints" / "last.ckpt")
    with pytest.raises(
        IsADirectoryError,
        match=r"previous checkpoint .*run' \(from previous\.checkpoint\) is a directory, not a "
        r"checkpoint file: .*inside: .*checkpoints/last\.ckpt",
    ):
        load_weights(model, run_dir, role="previous")
    whole = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(whole[: len(whole) // 2])
    assert zipfile.is_zipfile(run_dir / "checkpoints" / "last.ckpt")
    with pytest.raises(
        ValueError,
        match=r"teacher checkpoint .*truncated\.ckpt.* \(from teacher\.checkpoint\) could not be "
        r"read: the file is corrupt or truncated.*fix teacher\.checkpoint",
    ):
        load_weights(model, truncated)


def test_training_with_a_directory_as_teacher_says_it_is_a_directory(tmp_path):
    cfg = _compose("target=kd", "teacher=mlp_small", f"teacher.checkpoint={tmp_path}")
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    with pytest.raises(IsADirectoryError, match=r"teacher checkpoint .* is a directory"):
        build_reference_provider(cfg, "teacher_logits", datamodule)


def test_a_live_teacher_leaves_the_students_initial_weights_as_without_one(tmp_path, monkeypatch):
    """At one seed a distilled student starts where the hard-label student starts: the
    student is built before the teacher, whose construction draws random numbers."""
    from softlabel.modules.run import training

    kd = _compose("target=kd", "teacher=mlp_small")
    datamodule = build_datamodule(kd)
    datamodule.setup("fit")
    teacher_file = tmp_path / "teacher.pt"
    torch.save(build_model(kd.teacher.model, datamodule).state_dict(), teacher_file)
    kd.teacher.checkpoint = str(teacher_file)

    class Built(Exception):
        pass

    initial = []

    def capture(cfg, datamodule, student, *args, **kwargs):
        initial.append({k: v.clone() for k, v in student.state_dict().items()})
        raise Built

    monkeypatch.setattr(training, "build_module", capture)
    for i, cfg in enumerate((_compose("target=hard"), kd)):
        with pytest.raises(Built):
            train(cfg, tmp_path / f"run{i}")
    hard, distilled = initial
    assert hard.keys() == distilled.keys()
    for name in hard:
        assert torch.equal(hard[name], distilled[name]), name
