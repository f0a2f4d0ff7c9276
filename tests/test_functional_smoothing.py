"""label_smoothing_loss against torch's label_smoothing and the naive one-hot form."""

import pytest
import torch
import torch.nn.functional as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from loss_reference import (
    SHAPES,
    K,
    assert_same_values_and_grads,
    multiclass_inputs,
    weighted_reduce,
)

from softlabel.functional import label_smoothing_loss


def _naive(logits, target, smoothing, prior, reduction, weight):
    """One-hot + smoothing, then the sum of -q log p; sample weight weight[y]."""
    mask = target != -100
    safe = torch.where(mask, target, torch.zeros_like(target))
    num_classes = logits.shape[-1]
    one_hot = tf.one_hot(safe, num_classes).to(logits.dtype)
    spread = torch.full((num_classes,), 1.0 / num_classes, dtype=logits.dtype)
    if prior is not None:
        spread = prior
    soft = (1 - smoothing) * one_hot + smoothing * spread
    per = -(soft * torch.log_softmax(logits, -1)).sum(-1)
    sample_weight = mask.to(logits.dtype)
    if weight is not None:
        sample_weight = sample_weight * weight[safe]
    return weighted_reduce(per, sample_weight, reduction)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("with_ignore", [False, True])
def test_uniform_matches_torch_label_smoothing(dtype, shape, reduction, with_ignore):
    logits, target = multiclass_inputs(shape, dtype, with_ignore)
    ours = label_smoothing_loss(logits, target, 0.2, reduction=reduction)
    reference = tf.cross_entropy(
        logits.reshape(-1, K), target.reshape(-1), reduction=reduction, label_smoothing=0.2
    )
    if reduction == "none":
        reference = reference.reshape(shape)
    assert_same_values_and_grads(ours, reference, [logits], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(("use_prior", "with_ignore"), [(False, True), (True, False), (True, True)])
def test_weighted_matches_naive_definition(dtype, shape, reduction, use_prior, with_ignore):
    logits, target = multiclass_inputs(shape, dtype, with_ignore)
    weight = torch.rand(K, dtype=dtype) + 0.1
    prior = torch.tensor([0.4, 0.3, 0.1, 0.15, 0.05], dtype=dtype) if use_prior else None
    ours = label_smoothing_loss(
        logits, target, 0.15, prior=prior, reduction=reduction, weight=weight
    )
    reference = _naive(logits, target, 0.15, prior, reduction, weight)
    assert_same_values_and_grads(ours, reference, [logits], dtype)


def test_weight_semantics_differ_from_torch():
    """torch puts the class weights inside the smoothing term; softlabel weights the sample."""
    logits = torch.randn(8, K, dtype=torch.float64)
    target = torch.randint(0, K, (8,))
    weight = torch.tensor([0.2, 1.0, 3.0, 0.5, 2.0], dtype=torch.float64)
    ours = label_smoothing_loss(logits, target, 0.3, weight=weight)
    theirs = tf.cross_entropy(logits, target, weight=weight, label_smoothing=0.3)
    torch.testing.assert_close(ours, _naive(logits, target, 0.3, None, "mean", weight))
    assert not torch.allclose(ours, theirs)


def test_true_class_gets_one_minus_eps_plus_eps_over_k():
    # with logits = log q the cross-entropy H(q, softmax(logits)) is the entropy of q
    eps, target = 0.1, torch.tensor([2])
    q = torch.full((1, K), eps / K, dtype=torch.float64)
    q[0, 2] = 1 - eps + eps / K
    expected = -(q * q.log()).sum()
    torch.testing.assert_close(label_smoothing_loss(q.log(), target, eps), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_binary_uses_keras_convention(dtype, reduction, weighted):
    logits = torch.randn(2, 4, dtype=dtype, requires_grad=True)
    target = torch.tensor([[0.0, 1.0, -100.0, 1.0], [1.0, 0.0, 0.0, 1.0]], dtype=dtype)
    weight = torch.tensor([2.0, 0.5], dtype=dtype) if weighted else None
    eps = 0.2
    mask = target != -100
    label = torch.where(mask, target, torch.zeros_like(target))
    soft = label * (1 - eps) + eps / 2
    per = tf.binary_cross_entropy_with_logits(logits, soft, reduction="none")
    sample_weight = mask.to(dtype) * (weight[label.long()] if weighted else 1.0)
    per = per * sample_weight
    reference = {"none": per, "sum": per.sum(), "mean": per.sum() / sample_weight.sum()}
    ours = label_smoothing_loss(
        logits, target, eps, reduction=reduction, weight=weight, binary=True
    )
    assert_same_values_and_grads(ours, reference[reduction], [logits], dtype)


def test_binary_with_prior_smooths_towards_prior():
    logits = torch.randn(6, dtype=torch.float64)
    target = torch.tensor([0, 1, 1, 0, 1, 0], dtype=torch.float64)
    prior = torch.tensor([0.8, 0.2], dtype=torch.float64)
    soft = target * 0.9 + 0.1 * 0.2
    expected = tf.binary_cross_entropy_with_logits(logits, soft)
    torch.testing.assert_close(label_smoothing_loss(logits, target, 0.1, prior=prior), expected)


def test_zero_smoothing_is_cross_entropy():
    logits, target = multiclass_inputs((6,), torch.float64, True)
    torch.testing.assert_close(
        label_smoothing_loss(logits, target, 0.0), tf.cross_entropy(logits, target)
    )


def test_prior_as_list():
    logits, target = multiclass_inputs((6,), torch.float64, False)
    prior = [0.4, 0.3, 0.1, 0.15, 0.05]
    expected = _naive(logits, target, 0.1, torch.tensor(prior, dtype=torch.float64), "mean", None)
    torch.testing.assert_close(label_smoothing_loss(logits, target, 0.1, prior=prior), expected)


def test_gradcheck():
    logits = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[0, 3, -100], [2, 1, 1]])
    prior = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    weight = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: label_smoothing_loss(x, target, 0.2, prior=prior, weight=weight), (logits,)
    )
    binary_logits = torch.randn(5, dtype=torch.float64, requires_grad=True)
    binary_target = torch.tensor([0.0, 1.0, 1.0, -100.0, 0.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: label_smoothing_loss(x, binary_target, 0.3), (binary_logits,)
    )


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 4),
    k=st.integers(2, 6),
    eps=st.floats(0.0, 0.99),
    seed=st.integers(0, 2**16),
)
def test_property_equals_torch(n, k, eps, seed):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, dtype=torch.float64, generator=generator) * 3
    target = torch.randint(0, k, (n,), generator=generator)
    torch.testing.assert_close(
        label_smoothing_loss(logits, target, eps),
        tf.cross_entropy(logits, target, label_smoothing=eps),
    )
