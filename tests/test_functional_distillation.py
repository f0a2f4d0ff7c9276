"""distillation_loss against F.kl_div(log_target=True) and the written-out Bernoulli KL."""

import pytest
import torch
import torch.nn.functional as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from loss_reference import SHAPES, TOL, K, assert_same_values_and_grads, weighted_reduce

from softlabel.functional import distillation_loss


def _reference(student, teacher, target, temperature, alpha, reduction, weight):
    """(1 - alpha) * CE + alpha * T^2 * KL via torch's kl_div with log_target=True."""
    kl = tf.kl_div(
        torch.log_softmax(student / temperature, -1),
        torch.log_softmax(teacher / temperature, -1),
        reduction="none",
        log_target=True,
    ).sum(-1)
    soft = temperature**2 * kl
    if target is None:
        return weighted_reduce(soft, torch.ones_like(soft), reduction)
    mask = target != -100
    safe = torch.where(mask, target, torch.zeros_like(target))
    hard = tf.cross_entropy(
        student.reshape(-1, student.shape[-1]), safe.reshape(-1), reduction="none"
    ).reshape(safe.shape)
    sample_weight = mask.to(student.dtype)
    if weight is not None:
        sample_weight = sample_weight * weight[safe]
    return weighted_reduce((1 - alpha) * hard + alpha * soft, sample_weight, reduction)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(("weighted", "temperature"), [(False, 1.0), (True, 3.0)])
def test_multiclass_matches_kl_div(dtype, shape, reduction, weighted, temperature):
    student = torch.randn(*shape, K, dtype=dtype, requires_grad=True)
    teacher = torch.randn(*shape, K, dtype=dtype) * 2
    target = torch.randint(0, K, shape)
    target.view(-1)[::4] = -100
    weight = torch.rand(K, dtype=dtype) + 0.1 if weighted else None
    ours = distillation_loss(
        student, teacher, target, temperature, 0.7, reduction=reduction, weight=weight
    )
    reference = _reference(student, teacher, target, temperature, 0.7, reduction, weight)
    assert_same_values_and_grads(ours, reference, [student], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_pure_distillation_without_target_is_batchmean(dtype, reduction):
    student = torch.randn(2, 3, K, dtype=dtype, requires_grad=True)
    teacher = torch.randn(2, 3, K, dtype=dtype)
    ours = distillation_loss(student, teacher, None, 2.0, 1.0, reduction=reduction)
    reference = _reference(student, teacher, None, 2.0, 1.0, reduction, None)
    assert_same_values_and_grads(ours, reference, [student], dtype)
    if reduction == "mean":  # batchmean over the 6 positions
        kl_sum = tf.kl_div(
            torch.log_softmax(student / 2, -1), torch.softmax(teacher / 2, -1), reduction="sum"
        )
        torch.testing.assert_close(ours, 4 * kl_sum / 6, **TOL[dtype])


def test_soft_term_is_kl_zero_when_student_equals_teacher():
    logits = torch.randn(4, K, dtype=torch.float64)
    loss = distillation_loss(logits, logits.clone(), torch.randint(0, K, (4,)), 3.0, 1.0)
    torch.testing.assert_close(loss, torch.zeros((), dtype=torch.float64))


def test_teacher_gets_no_gradient():
    student = torch.randn(4, K, requires_grad=True)
    teacher = torch.randn(4, K, requires_grad=True)
    loss = distillation_loss(student, teacher, torch.randint(0, K, (4,)))
    loss.backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def _binary_reference(student, teacher, target, temperature, alpha, reduction, weight):
    """Bernoulli KL written out with probabilities, times T^2, plus BCE."""
    p_t = torch.sigmoid(teacher / temperature)
    p_s = torch.sigmoid(student / temperature)
    kl = p_t * torch.log(p_t / p_s) + (1 - p_t) * torch.log((1 - p_t) / (1 - p_s))
    mask = target != -100
    label = torch.where(mask, target, torch.zeros_like(target)).to(student.dtype)
    hard = tf.binary_cross_entropy_with_logits(student, label, reduction="none")
    sample_weight = mask.to(student.dtype)
    if weight is not None:
        sample_weight = sample_weight * weight[label.long()]
    return weighted_reduce(
        (1 - alpha) * hard + alpha * temperature**2 * kl, sample_weight, reduction
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_binary_matches_bernoulli_kl(dtype, reduction, weighted):
    student = torch.randn(2, 4, dtype=dtype, requires_grad=True)
    teacher = torch.randn(2, 4, dtype=dtype)
    target = torch.tensor([[0.0, 1.0, -100.0, 1.0], [1.0, 0.0, 0.0, 1.0]], dtype=dtype)
    weight = torch.tensor([2.0, 0.5], dtype=dtype) if weighted else None
    ours = distillation_loss(
        student, teacher, target, 2.5, 0.6, reduction=reduction, weight=weight, binary=True
    )
    reference = _binary_reference(student, teacher, target, 2.5, 0.6, reduction, weight)
    assert_same_values_and_grads(ours, reference, [student], dtype)


def test_binary_pure_distillation_without_target():
    student = torch.randn(2, 3, dtype=torch.float64)
    teacher = torch.randn(2, 3, dtype=torch.float64)
    zeros = torch.zeros(2, 3, dtype=torch.float64)
    expected = _binary_reference(student, teacher, zeros, 2.0, 1.0, "mean", None)
    ours = distillation_loss(student, teacher, None, 2.0, 1.0, binary=True)
    torch.testing.assert_close(ours, expected)
    ours_1d = distillation_loss(student[0], teacher[0], None, 2.0, 1.0)  # 1-D: binary
    torch.testing.assert_close(
        ours_1d, _binary_reference(student[0], teacher[0], zeros[0], 2.0, 1.0, "mean", None)
    )


def test_gradcheck():
    student = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 3, 4, dtype=torch.float64)
    target = torch.tensor([[0, 3, -100], [2, 1, 1]])
    weight = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: distillation_loss(x, teacher, target, 3.0, 0.5, weight=weight), (student,)
    )
    binary_student = torch.randn(5, dtype=torch.float64, requires_grad=True)
    binary_teacher = torch.randn(5, dtype=torch.float64)
    binary_target = torch.tensor([0.0, 1.0, 1.0, -100.0, 0.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: distillation_loss(x, binary_teacher, binary_target, 2.0, 0.5), (binary_student,)
    )


@settings(max_examples=15, deadline=None)
@given(
    k=st.integers(2, 6),
    temperature=st.floats(0.5, 8.0),
    scale=st.floats(0.1, 20.0),
    seed=st.integers(0, 2**16),
)
def test_property_pure_kd_is_non_negative_and_matches(k, temperature, scale, seed):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(3, k, dtype=torch.float64, generator=generator) * scale
    teacher = torch.randn(3, k, dtype=torch.float64, generator=generator) * scale
    ours = distillation_loss(student, teacher, None, temperature, 1.0)
    reference = _reference(student, teacher, None, temperature, 1.0, "mean", None)
    assert ours >= 0
    torch.testing.assert_close(ours, reference)
