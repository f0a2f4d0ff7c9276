"""OnlineLabelSmoothing: the epoch update against a hand computation, the loss against the
paper's formula written out, checkpoint round trips and the Lightning hooks."""

from __future__ import annotations

import functools

import pytest
import torch
from loss_reference import SHAPES, TOL, K, assert_same_values_and_grads, weighted_reduce
from torch import nn

from softlabel import SoftTargetLoss
from softlabel.targets import OnlineLabelSmoothing, UniformPrior


def _reference(logits, target, eps, prior, reduction, weight):
    """Zhang et al. (2021): (1 - eps) * (-log p_y) + eps * (-sum_k S[y, k] log p_k)."""
    mask = target != -100
    safe = torch.where(mask, target, torch.zeros_like(target))
    log_p = torch.log_softmax(logits, -1)
    hard = -log_p.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    soft = -(prior.to(logits.dtype)[safe] * log_p).sum(-1)
    per = torch.where(mask, (1 - eps) * hard + eps * soft, torch.zeros_like(hard))
    sample_weight = mask.to(logits.dtype)
    if weight is not None:
        sample_weight = sample_weight * weight[safe]
    return weighted_reduce(per, sample_weight, reduction)


def _softmax_by_hand(row):
    e = [float(torch.exp(torch.tensor(v, dtype=torch.float64))) for v in row]
    return [v / sum(e) for v in e]


def test_epoch_update_matches_a_hand_computation():
    source = OnlineLabelSmoothing(smoothing=0.5)
    logits = torch.tensor(
        [
            [2.0, 0.0, 1.0],  # predicts 0, label 0: counted for class 0
            [0.5, 1.5, 0.0],  # predicts 1, label 1: counted for class 1
            [3.0, 1.0, 0.0],  # predicts 0, label 0: counted for class 0
            [1.0, 0.0, 0.0],  # predicts 0, label 2: wrong, not counted
            [0.0, 0.0, 5.0],  # label ignored
        ]
    )
    target = torch.tensor([0, 1, 0, 2, -100])
    source.on_train_batch_end(logits[:3], target[:3])  # two batches of one epoch
    source.on_train_batch_end(logits[3:], target[3:])
    sums, counts = source.statistics
    assert counts.tolist() == [2.0, 1.0, 0.0]
    source.on_train_epoch_end()
    row0 = [(a + b) / 2 for a, b in zip(_softmax_by_hand([2, 0, 1]), _softmax_by_hand([3, 1, 0]))]
    expected = torch.tensor(
        [row0, _softmax_by_hand([0.5, 1.5, 0.0]), [1 / 3, 1 / 3, 1 / 3]], dtype=torch.float64
    )
    torch.testing.assert_close(source.prior, expected, **TOL[torch.float64])
    assert source.epochs == 1 and source.statistics[1].sum() == 0
    # a class with no correct sample keeps its previous row (here: from epoch 1)
    source.on_train_batch_end(torch.tensor([[0.0, 0.0, 4.0]]), torch.tensor([2]))
    source.on_train_epoch_end()
    updated = source.prior
    torch.testing.assert_close(updated[:2], expected[:2], **TOL[torch.float64])
    torch.testing.assert_close(
        updated[2], torch.tensor(_softmax_by_hand([0.0, 0.0, 4.0]), dtype=torch.float64)
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_first_epoch_is_uniform_label_smoothing(shape):
    logits = torch.randn(*shape, K, requires_grad=True)
    target = torch.randint(0, K, shape)
    target.view(-1)[::3] = -100
    ours = SoftTargetLoss(OnlineLabelSmoothing(0.5))(logits, target)
    assert_same_values_and_grads(
        ours, SoftTargetLoss(UniformPrior(0.5))(logits, target), [logits], torch.float32
    )


def _trained_source(eps=0.4, seed=0):
    """A source one epoch in, with every row of its prior learnt."""
    generator = torch.Generator().manual_seed(seed)
    source = OnlineLabelSmoothing(eps)
    for _ in range(3):
        logits = torch.randn(40, K, generator=generator, dtype=torch.float64) * 3
        source.on_train_batch_end(logits, logits.argmax(dim=1))  # all correct
    source.on_train_epoch_end()
    return source


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_loss_matches_written_out_formula(dtype, shape, reduction, weighted):
    source = _trained_source()
    prior = source.prior
    assert not torch.allclose(prior, torch.full_like(prior, 1 / K))
    logits = torch.randn(*shape, K, dtype=dtype, requires_grad=True)
    target = torch.randint(0, K, shape)
    target.view(-1)[::4] = -100
    weight = torch.rand(K, dtype=dtype) + 0.1 if weighted else None
    ours = SoftTargetLoss(source, reduction=reduction, weight=weight)(logits, target)
    reference = _reference(logits, target, 0.4, prior, reduction, weight)
    assert_same_values_and_grads(ours, reference, [logits], dtype)


def test_three_dimensional_statistics_and_ignore_index():
    """(B, T, V) logits are counted position by position; the loss's ignore_index (read at
    the last loss call) and out-of-range targets are skipped."""
    source = OnlineLabelSmoothing(0.2)
    criterion = SoftTargetLoss(source, ignore_index=1)
    logits = torch.randn(2, 4, K) * 4
    target = logits.argmax(-1)  # every position correct
    target[0, 0] = 1  # the loss's ignore_index: skipped, even though it is a class
    criterion(logits, target)
    source.on_train_batch_end(logits, target)
    counts = source.statistics[1]
    expected = torch.bincount(target[target != 1], minlength=K).double()
    torch.testing.assert_close(counts, expected)


def test_state_dict_round_trip_resumes_exactly():
    """A mid-epoch state_dict restores prior and partial statistics: both copies give the
    same next prior and the same loss."""
    generator = torch.Generator().manual_seed(3)
    source = _trained_source(seed=1)
    first = torch.randn(16, K, generator=generator) * 3
    source.on_train_batch_end(first, first.argmax(1))
    criterion = SoftTargetLoss(source)
    state = criterion.state_dict()
    assert list(state) == ["source._extra_state"]
    restored = SoftTargetLoss(OnlineLabelSmoothing(0.4))
    restored.load_state_dict(state)
    assert restored.source.epochs == source.epochs == 1
    second = torch.randn(16, K, generator=generator) * 3
    target = torch.randint(0, K, (16,), generator=generator)
    for copy in (source, restored.source):
        copy.on_train_batch_end(second, target)
        copy.on_train_epoch_end()
    assert torch.equal(restored.source.prior, source.prior)
    assert torch.equal(restored(second, target), criterion(second, target))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2 or None, got 1"):
        OnlineLabelSmoothing(num_classes=1)
    with pytest.raises(ValueError, match="smoothing must be in"):
        OnlineLabelSmoothing(smoothing=1.0)
    source = OnlineLabelSmoothing(num_classes=4)
    with pytest.raises(ValueError, match="statistics of 4 classes, got logits with K=5"):
        source.on_train_batch_end(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer target"):
        source.on_train_batch_end(torch.randn(2, 4), torch.softmax(torch.randn(2, 4), -1))
    with pytest.raises(ValueError, match="binary"):
        SoftTargetLoss(source, binary=True)(torch.randn(3), torch.tensor([0.0, 1.0, 1.0]))


def _loader(n=24, k=3):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 4, generator=g), torch.randint(0, k, (n,), generator=g)
    data = torch.utils.data.TensorDataset(x, y, torch.arange(n))
    return torch.utils.data.DataLoader(data, batch_size=6)


def _fit(tmp_path, epochs, ckpt_path=None):
    import lightning as L

    from softlabel.modules import SoftLabelModule

    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    module = SoftLabelModule(
        student,
        SoftTargetLoss(OnlineLabelSmoothing(0.5)),
        optimizer=functools.partial(torch.optim.SGD, lr=0.5),
        num_classes=3,
    )
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=tmp_path, filename="{epoch}", save_top_k=-1, every_n_epochs=1
    )
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=False,
        callbacks=[checkpoint],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    trainer.fit(module, _loader(), _loader(), ckpt_path=ckpt_path)
    return module.loss.source


@pytest.mark.filterwarnings("ignore:The dirpath has changed")
def test_lightning_turns_the_prior_over_each_epoch_and_resumes_exactly(tmp_path):
    """The module ends the source's epoch with the last batch, before validation, so the
    checkpoint of epoch e holds the prior learnt in epoch e; resuming from it continues as
    if uninterrupted."""
    straight = _fit(tmp_path / "straight", epochs=3)
    assert straight.epochs == 3
    saved = torch.load(tmp_path / "straight" / "epoch=1.ckpt", weights_only=True)
    state = saved["state_dict"]["loss.source._extra_state"]
    assert state["epochs"] == 2 and float(state["counts"].sum()) == 0.0
    resumed = _fit(tmp_path / "resumed", epochs=3, ckpt_path=tmp_path / "straight" / "epoch=1.ckpt")
    assert resumed.epochs == 3
    torch.testing.assert_close(resumed.prior, straight.prior, rtol=0, atol=0)
    assert not torch.allclose(straight.prior, torch.full((3, 3), 1 / 3, dtype=torch.float64))
