"""cross_entropy_loss against torch's cross_entropy and binary_cross_entropy_with_logits."""

import pytest
import torch
import torch.nn.functional as tf
from loss_reference import (
    SHAPES,
    K,
    assert_same_values_and_grads,
    multiclass_inputs,
    weighted_reduce,
)

from softlabel.functional import cross_entropy_loss


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(("weighted", "with_ignore"), [(False, False), (False, True), (True, True)])
def test_multiclass_matches_torch(dtype, shape, reduction, weighted, with_ignore):
    logits, target = multiclass_inputs(shape, dtype, with_ignore)
    weight = torch.rand(K, dtype=dtype) + 0.1 if weighted else None
    ours = cross_entropy_loss(logits, target, reduction=reduction, weight=weight)
    reference = tf.cross_entropy(
        logits.reshape(-1, K), target.reshape(-1), reduction=reduction, weight=weight
    )
    if reduction == "none":
        reference = reference.reshape(shape)
        assert ours.shape == target.shape
    assert_same_values_and_grads(ours, reference, [logits], dtype)


def _binary_reference(logits, target, reduction, weight):
    mask = target != -100
    label = torch.where(mask, target, torch.zeros_like(target)).to(logits.dtype)
    per = tf.binary_cross_entropy_with_logits(logits, label, reduction="none")
    sample_weight = mask.to(logits.dtype)
    if weight is not None:
        sample_weight = sample_weight * weight[label.long()]
    return weighted_reduce(per, sample_weight, reduction)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(("weighted", "with_ignore"), [(False, False), (False, True), (True, True)])
def test_binary_matches_bce_with_logits(dtype, shape, reduction, weighted, with_ignore):
    logits = torch.randn(*shape, dtype=dtype, requires_grad=True)
    target = torch.randint(0, 2, shape).to(dtype)
    if with_ignore:
        target.view(-1)[::3] = -100
    weight = torch.tensor([0.3, 2.0], dtype=dtype) if weighted else None
    ours = cross_entropy_loss(logits, target, reduction=reduction, weight=weight, binary=True)
    reference = _binary_reference(logits, target, reduction, weight)
    assert_same_values_and_grads(ours, reference, [logits], dtype)


def test_binary_accepts_integer_targets():
    logits = torch.randn(7)
    target = torch.tensor([0, 1, 1, 0, -100, 1, 0])
    ours = cross_entropy_loss(logits, target)
    mask = target != -100
    reference = tf.binary_cross_entropy_with_logits(logits[mask], target[mask].float())
    torch.testing.assert_close(ours, reference)


def test_weighted_mean_divides_by_sum_of_sample_weights():
    logits = torch.randn(4, 3, dtype=torch.float64)
    target = torch.tensor([0, 2, 2, 1])
    weight = torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64)
    per = -tf.log_softmax(logits, -1).gather(-1, target[:, None]).squeeze(-1)
    expected = (per * weight[target]).sum() / weight[target].sum()
    torch.testing.assert_close(cross_entropy_loss(logits, target, weight=weight), expected)


def test_gradcheck_multiclass_and_binary():
    logits = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[0, 3, -100], [2, 1, 1]])
    weight = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: cross_entropy_loss(x, target, weight=weight), (logits,)
    )
    binary_logits = torch.randn(5, dtype=torch.float64, requires_grad=True)
    binary_target = torch.tensor([0.0, 1.0, 1.0, -100.0, 0.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: cross_entropy_loss(x, binary_target, reduction="sum"), (binary_logits,)
    )
