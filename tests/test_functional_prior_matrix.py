"""label_smoothing_loss with a class-conditional prior matrix M (K, K), row y on the simplex:
(1 - eps) CE + eps H(M[y], p), against the soft target written out."""

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

from softlabel import SoftTargetLoss
from softlabel.functional import label_smoothing_loss
from softlabel.kernels import fused_soft_target_loss
from softlabel.targets import ClassPrior


def _matrix(k=K, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(k, k, generator=gen, dtype=torch.float64) * 2, -1).to(dtype)


def _reference(logits, target, eps, matrix, reduction, weight=None):
    """q = (1 - eps) onehot(y) + eps M[y]; loss = -sum_k q_k log p_k; sample weight weight[y]."""
    mask = target != -100
    safe = torch.where(mask, target, torch.zeros_like(target))
    one_hot = tf.one_hot(safe, logits.shape[-1]).to(logits.dtype)
    soft = (1 - eps) * one_hot + eps * matrix[safe]
    per = -(soft * torch.log_softmax(logits, -1)).sum(-1)
    sample_weight = mask.to(logits.dtype)
    if weight is not None:
        sample_weight = sample_weight * weight[safe]
    return weighted_reduce(per, sample_weight, reduction)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(("weighted", "with_ignore"), [(False, True), (True, False), (True, True)])
def test_matches_the_written_out_soft_target(dtype, shape, reduction, weighted, with_ignore):
    logits, target = multiclass_inputs(shape, dtype, with_ignore)
    matrix = _matrix(dtype=dtype)
    weight = torch.rand(K, dtype=dtype) + 0.1 if weighted else None
    ours = label_smoothing_loss(
        logits, target, 0.3, prior=matrix, reduction=reduction, weight=weight
    )
    reference = _reference(logits, target, 0.3, matrix, reduction, weight)
    assert_same_values_and_grads(ours, reference, [logits], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_over_several_chunks(dtype):
    logits, target = multiclass_inputs((23,), dtype, True)
    matrix = _matrix(dtype=dtype)
    ours = fused_soft_target_loss(logits, target, mode="ls", eps=0.2, prior=matrix, chunk_rows=4)
    reference = _reference(logits, target, 0.2, matrix, "none")
    assert_same_values_and_grads(ours, reference, [logits], dtype)


def test_equal_rows_give_the_class_prior_and_identity_gives_cross_entropy():
    logits, target = multiclass_inputs((2, 3), torch.float64, True)
    prior = torch.tensor([0.4, 0.3, 0.1, 0.15, 0.05], dtype=torch.float64)
    torch.testing.assert_close(
        label_smoothing_loss(logits, target, 0.2, prior=prior.expand(K, K)),
        label_smoothing_loss(logits, target, 0.2, prior=prior),
    )
    torch.testing.assert_close(
        label_smoothing_loss(logits, target, 0.2, prior=torch.eye(K, dtype=torch.float64)),
        tf.cross_entropy(logits.reshape(-1, K), target.reshape(-1)),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_probability_targets_are_smoothed_by_c_times_m(dtype):
    logits = torch.randn(2, 3, K, dtype=dtype, requires_grad=True)
    c = torch.softmax(torch.randn(2, 3, K, dtype=dtype), -1)
    matrix = _matrix(dtype=dtype)
    soft = 0.75 * c + 0.25 * (c @ matrix)
    reference = -(soft * torch.log_softmax(logits, -1)).sum(-1).mean()
    ours = label_smoothing_loss(logits, c, 0.25, prior=matrix)
    assert_same_values_and_grads(ours, reference, [logits], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_binary_uses_row_y_of_a_two_by_two_matrix(dtype):
    logits = torch.randn(2, 4, dtype=dtype, requires_grad=True)
    target = torch.tensor([[0.0, 1.0, -100.0, 1.0], [1.0, 0.0, 0.0, 1.0]], dtype=dtype)
    matrix = torch.tensor([[0.9, 0.1], [0.3, 0.7]], dtype=dtype)
    mask = target != -100
    label = torch.where(mask, target, torch.zeros_like(target))
    positive = torch.where(label == 1, matrix[1, 1], matrix[0, 1])  # P(class 1 | y)
    soft = 0.8 * label + 0.2 * positive
    per = tf.binary_cross_entropy_with_logits(logits, soft, reduction="none")
    reference = (per * mask).sum() / mask.sum()
    ours = label_smoothing_loss(logits, target, 0.2, prior=matrix, binary=True)
    assert_same_values_and_grads(ours, reference, [logits], dtype)


def test_gradcheck_and_gradient_penalty():
    logits = torch.randn(2, 3, K, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[0, 3, -100], [2, 1, 4]])
    matrix = _matrix()
    assert torch.autograd.gradcheck(
        lambda x: label_smoothing_loss(x, target, 0.3, prior=matrix), (logits,)
    )
    assert torch.autograd.gradgradcheck(
        lambda x: label_smoothing_loss(x, target, 0.3, prior=matrix), (logits,)
    )


@pytest.mark.parametrize(
    ("prior", "pattern"),
    [
        (torch.full((K, K - 1), 1.0 / (K - 1)), r"prior must be .*\(5, 5\) matrix.*shape \(5, 4\)"),
        (torch.full((3, 3), 1.0 / 3), r"prior must be .*shape \(3, 3\)"),
        (torch.eye(K) * 0.5, r"prior matrix rows must .*sum to 1.*row 0.*sum 0\.5"),
        (
            torch.eye(K).index_put((torch.tensor(2), torch.tensor(3)), torch.tensor(-0.5)),
            r"prior matrix rows.*row 2.*-0\.5",
        ),
        (torch.eye(K).index_fill(0, torch.tensor(4), float("nan")), r"row 4.*nan"),
    ],
)
def test_bad_matrices_are_refused_naming_the_value(prior, pattern):
    with pytest.raises(ValueError, match=pattern):
        label_smoothing_loss(torch.randn(3, K), torch.tensor([0, 1, 2]), 0.1, prior=prior)


def test_class_prior_source_takes_a_matrix():
    logits, target = multiclass_inputs((6,), torch.float64, True)
    matrix = _matrix()
    source = ClassPrior(0.3, prior=matrix)
    assert "5x5 class-conditional matrix" in repr(source)
    expected = _reference(logits, target, 0.3, matrix, "mean")
    assert_same_values_and_grads(
        SoftTargetLoss(source)(logits, target), expected, [logits], torch.float64
    )
    source.set_prior(matrix * 7.0)  # rows normalised
    torch.testing.assert_close(source.prior, matrix)
    with pytest.raises(ValueError, match="prior rows must sum to 1"):
        ClassPrior(0.1, prior=matrix * 2)
    with pytest.raises(ValueError, match=r"positive sum in every row \(row 1\)"):
        source.set_prior(matrix.index_fill(0, torch.tensor(1), 0.0))
