"""self_correction_loss (ReLoop) against the formula written out with max(0, .)."""

import pytest
import torch
import torch.nn.functional as tf
from loss_reference import SHAPES, K, assert_same_values_and_grads, weighted_reduce

from softlabel.functional import self_correction_loss


def _multiclass_reference(logits, target, previous, alpha, reduction, weight):
    mask = target != -100
    safe = torch.where(mask, target, torch.zeros_like(target))
    probs = torch.softmax(logits, -1)
    p_true = probs.gather(-1, safe[..., None]).squeeze(-1)
    prev_true = previous.gather(-1, safe[..., None]).squeeze(-1)
    correction = torch.clamp(prev_true - p_true, min=0)
    hard = -torch.log_softmax(logits, -1).gather(-1, safe[..., None]).squeeze(-1)
    sample_weight = mask.to(logits.dtype)
    if weight is not None:
        sample_weight = sample_weight * weight[safe]
    return weighted_reduce((1 - alpha) * hard + alpha * correction, sample_weight, reduction)


def _binary_reference(logits, target, previous, alpha, reduction, weight):
    mask = target != -100
    y = torch.where(mask, target, torch.zeros_like(target)).to(logits.dtype)
    p = torch.sigmoid(logits)
    correction = y * torch.clamp(previous - p, min=0) + (1 - y) * torch.clamp(p - previous, min=0)
    hard = tf.binary_cross_entropy_with_logits(logits, y, reduction="none")
    sample_weight = mask.to(logits.dtype)
    if weight is not None:
        sample_weight = sample_weight * weight[y.long()]
    return weighted_reduce((1 - alpha) * hard + alpha * correction, sample_weight, reduction)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_multiclass_matches_written_out_formula(dtype, shape, reduction, weighted):
    logits = torch.randn(*shape, K, dtype=dtype, requires_grad=True)
    previous = torch.softmax(torch.randn(*shape, K, dtype=dtype) * 2, -1)
    target = torch.randint(0, K, shape)
    target.view(-1)[::4] = -100
    weight = torch.rand(K, dtype=dtype) + 0.1 if weighted else None
    ours = self_correction_loss(logits, target, previous, 0.4, reduction=reduction, weight=weight)
    reference = _multiclass_reference(logits, target, previous, 0.4, reduction, weight)
    assert_same_values_and_grads(ours, reference, [logits], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_binary_matches_written_out_formula(dtype, reduction, weighted):
    logits = torch.randn(3, 4, dtype=dtype, requires_grad=True)
    previous = torch.rand(3, 4, dtype=dtype)
    target = torch.randint(0, 2, (3, 4)).to(dtype)
    target[0, 1] = -100
    weight = torch.tensor([2.0, 0.5], dtype=dtype) if weighted else None
    ours = self_correction_loss(
        logits, target, previous, 0.6, reduction=reduction, weight=weight, binary=True
    )
    reference = _binary_reference(logits, target, previous, 0.6, reduction, weight)
    assert_same_values_and_grads(ours, reference, [logits], dtype)


def test_hinge_is_active_only_when_probability_dropped():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4]], dtype=torch.float64))
    previous = torch.tensor([[0.5, 0.3, 0.2], [0.6, 0.2, 0.2]], dtype=torch.float64)
    target = torch.tensor([0, 0])
    ours = self_correction_loss(logits, target, previous, 1.0, reduction="none")
    torch.testing.assert_close(ours, torch.tensor([0.0, 0.3], dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_k2_multiclass_equals_binary(dtype):
    logits = torch.randn(8, 2, dtype=dtype, requires_grad=True)
    previous_positive = torch.rand(8, dtype=dtype)
    previous = torch.stack([1 - previous_positive, previous_positive], -1)
    target = torch.randint(0, 2, (8,))
    target[3] = -100
    multiclass = self_correction_loss(logits, target, previous, 0.5, reduction="none")
    binary_logit = logits[:, 1] - logits[:, 0]
    binary = self_correction_loss(
        binary_logit, target.to(dtype), previous_positive, 0.5, reduction="none"
    )
    assert_same_values_and_grads(multiclass, binary, [logits], dtype)


def test_previous_probabilities_get_no_gradient():
    logits = torch.randn(4, K, requires_grad=True)
    previous = torch.softmax(torch.randn(4, K), -1).requires_grad_()
    self_correction_loss(logits, torch.randint(0, K, (4,)), previous, 0.9).backward()
    assert previous.grad is None and logits.grad is not None


def test_gradcheck():
    # previous chosen away from p so max(0, .) is differentiable at the test point
    logits = torch.zeros(2, 3, 4, dtype=torch.float64).normal_(0, 0.1).requires_grad_()
    previous = torch.tensor([0.9, 0.05, 0.03, 0.02], dtype=torch.float64).expand(2, 3, 4)
    target = torch.tensor([[0, 3, -100], [2, 0, 1]])
    weight = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: self_correction_loss(x, target, previous, 0.5, weight=weight), (logits,)
    )
    binary_logits = torch.tensor([0.1, -0.2, 0.3, 0.0, -0.1], dtype=torch.float64).requires_grad_()
    binary_previous = torch.tensor([0.9, 0.1, 0.2, 0.5, 0.95], dtype=torch.float64)
    binary_target = torch.tensor([1.0, 1.0, 0.0, -100.0, 0.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: self_correction_loss(x, binary_target, binary_previous, 0.5), (binary_logits,)
    )
