"""SoftLabelModule, reference providers and metrics, checked against direct computations."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from softlabel import SoftTargetLoss
from softlabel.modules import (
    CachedTeacher,
    LiveTeacher,
    PreviousModelProvider,
    SoftLabelModule,
    build_metrics,
)
from softlabel.schedules import Linear
from softlabel.targets import Hard, PreviousModel, Teacher, UniformPrior


def _mlp(k: int = 3, d: int = 4) -> nn.Module:
    return nn.Sequential(
        nn.Linear(d, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, k)
    )


def _adam():
    return functools.partial(torch.optim.AdamW, lr=0.01)


def test_live_teacher_frozen_eval_and_exact_logits():
    teacher = _mlp()
    module = SoftLabelModule(
        _mlp(),
        SoftTargetLoss(Teacher()),
        optimizer=_adam(),
        reference_provider=LiveTeacher(teacher),
        num_classes=3,
    )
    module.train()
    assert module.student.training and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    x = torch.randn(5, 4)
    expected = teacher.eval()(x)
    got = module.reference(x, torch.arange(5))
    torch.testing.assert_close(got, expected)
    assert not got.requires_grad
    assert len(module.configure_optimizers().param_groups[0]["params"]) == len(
        list(module.student.parameters())
    )


def test_previous_model_probabilities_multiclass_and_binary():
    model = _mlp(k=3)
    x = torch.randn(6, 4)
    probs = PreviousModelProvider(model, "multiclass")(x, torch.arange(6))
    torch.testing.assert_close(probs, torch.softmax(model.eval()(x), -1))
    binary = _mlp(k=1)
    p1 = PreviousModelProvider(binary, "binary")(x, torch.arange(6))
    torch.testing.assert_close(p1, torch.sigmoid(binary.eval()(x)[:, 0]))
    with pytest.raises(ValueError, match="task"):
        PreviousModelProvider(model, "multilabel")


def test_cached_teacher_looks_up_by_index():
    table = torch.arange(30, dtype=torch.float64).reshape(10, 3)

    class Cache:
        def lookup(self, index):
            return table[index]

    got = CachedTeacher(Cache())(torch.zeros(3, 4), torch.tensor([7, 0, 3]))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, table[[7, 0, 3]].float())
    with pytest.raises(TypeError, match="lookup"):
        CachedTeacher(object())


def test_reference_mismatch_is_refused():
    with pytest.raises(ValueError, match="teacher_logits"):
        SoftLabelModule(_mlp(), SoftTargetLoss(Teacher()), optimizer=_adam(), num_classes=3)
    with pytest.raises(ValueError, match="previous_probs"):
        SoftLabelModule(
            _mlp(),
            SoftTargetLoss(PreviousModel()),
            optimizer=_adam(),
            reference_provider=LiveTeacher(_mlp()),
            num_classes=3,
        )
    with pytest.raises(ValueError, match="num_classes must be 1"):
        SoftLabelModule(
            _mlp(), SoftTargetLoss(Hard()), optimizer=_adam(), task="binary", num_classes=3
        )


def test_checkpoint_state_excludes_teacher_and_loads_without_it():
    module = SoftLabelModule(
        _mlp(),
        SoftTargetLoss(Teacher()),
        optimizer=_adam(),
        reference_provider=LiveTeacher(_mlp()),
        num_classes=3,
    )
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    keys = set(checkpoint["state_dict"])
    assert keys and not any(k.startswith("reference_provider.") for k in keys)
    assert {k for k in keys if k.startswith("student.")} == {
        f"student.{k}" for k in module.student.state_dict()
    }
    other = SoftLabelModule(
        _mlp(),
        SoftTargetLoss(Teacher()),
        optimizer=_adam(),
        reference_provider=LiveTeacher(_mlp()),
        num_classes=3,
    )
    other.load_state_dict(checkpoint["state_dict"])  # strict, teacher keys absent
    torch.testing.assert_close(other.student[0].weight, module.student[0].weight)
    broken = dict(checkpoint["state_dict"])
    broken.pop("student.0.weight")
    with pytest.raises(RuntimeError, match="student.0.weight"):
        other.load_state_dict(broken)


def _loader(n: int = 24, k: int = 3):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 4, generator=g), torch.randint(0, k, (n,), generator=g)
    data = torch.utils.data.TensorDataset(x, y, torch.arange(n))
    return torch.utils.data.DataLoader(data, batch_size=6)


def test_training_advances_schedule_and_logs_values(tmp_path):
    import lightning as L

    source = UniformPrior(smoothing=Linear(0.0, 0.4))
    module = SoftLabelModule(
        _mlp(),
        SoftTargetLoss(source),
        optimizer=_adam(),
        scheduler=functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR),
        num_classes=3,
    )
    trainer = L.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    trainer.fit(module, train_dataloaders=_loader(), val_dataloaders=_loader())
    total = 8  # 2 epochs x 4 batches
    assert trainer.global_step == total
    # last step ran at progress 7/8: smoothing = 0.4 * 7/8
    assert source.smoothing == pytest.approx(0.4 * 7 / 8)
    assert trainer.callback_metrics["train/smoothing"].item() == pytest.approx(0.4 * 7 / 8)
    assert module.lr_schedulers().T_max == total
    assert {"train/loss_epoch", "train/acc", "val/acc", "val/nll", "val/ece", "train/nll"} <= set(
        trainer.callback_metrics
    )


def test_multiclass_metrics_match_direct_formulas():
    g = torch.Generator().manual_seed(1)
    logits, y = 3 * torch.randn(200, 7, generator=g), torch.randint(0, 7, (200,), generator=g)
    metrics = build_metrics("multiclass", 7)
    metrics.update(logits, y)
    out = {k: v.item() for k, v in metrics.compute().items()}
    assert set(out) == {"acc", "acc_top5", "nll", "ece"}
    assert out["acc"] == pytest.approx((logits.argmax(-1) == y).float().mean().item())
    top5 = logits.topk(5, -1).indices
    assert out["acc_top5"] == pytest.approx((top5 == y[:, None]).any(-1).float().mean().item())
    assert out["nll"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    conf, pred = torch.softmax(logits, -1).max(-1)
    bins = np.clip(np.ceil(conf.numpy() * 15) - 1, 0, 14)
    ece = sum(
        abs(conf.numpy()[bins == b].mean() - (pred == y).numpy()[bins == b].mean())
        * (bins == b).mean()
        for b in range(15)
        if (bins == b).any()
    )
    assert out["ece"] == pytest.approx(ece, abs=1e-5)
    assert "acc_top5" not in build_metrics("multiclass", 4)


def test_binary_metrics_match_direct_formulas():
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(2)
    y = torch.randint(0, 2, (300,), generator=g)
    logits = 0.3 * torch.randn(300, generator=g) + (y - 0.5)  # logits inside [-1, 1]
    metrics = build_metrics("binary", 1)
    metrics.update(logits, y)
    out = {k: v.item() for k, v in metrics.compute().items()}
    assert set(out) == {"acc", "auroc", "logloss", "ece"}
    assert out["acc"] == pytest.approx(((logits > 0).long() == y).float().mean().item())
    assert out["auroc"] == pytest.approx(roc_auc_score(y.numpy(), logits.numpy()), abs=1e-6)
    assert out["logloss"] == pytest.approx(
        F.binary_cross_entropy_with_logits(logits, y.float()).item(), rel=1e-5
    )
    with pytest.raises(ValueError, match="task"):
        build_metrics("regression", 1)
