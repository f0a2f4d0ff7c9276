"""Behaviour shared by every loss: ignored batches, extreme logits, half precision, errors."""

import re

import pytest
import torch
import torch.nn.functional as tf

from softlabel.functional import (
    cross_entropy_loss,
    distillation_loss,
    label_smoothing_loss,
    self_correction_loss,
)

K = 4


def _all_losses(logits, target, reference, **kwargs):
    """Each loss of the library on the same inputs, by name."""
    binary = logits.shape == target.shape
    if binary:
        kwargs.setdefault("binary", True)
    reference32 = reference.float()
    previous = torch.sigmoid(reference32) if binary else torch.softmax(reference32, -1)
    return {
        "ce": cross_entropy_loss(logits, target, **kwargs),
        "ls": label_smoothing_loss(logits, target, 0.1, **kwargs),
        "ls_prior": label_smoothing_loss(
            logits, target, 0.1, prior=[0.5, 0.5] if binary else [0.1, 0.2, 0.3, 0.4], **kwargs
        ),
        "kd": distillation_loss(logits, reference, target, 2.0, 0.5, **kwargs),
        "reloop": self_correction_loss(logits, target, previous.detach(), 0.5, **kwargs),
    }


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_all_ignored_gives_zero_with_working_backward(binary, reduction, weighted):
    shape = (3, 2) if binary else (3, 2, K)
    logits = torch.randn(*shape, requires_grad=True)
    target = torch.full((3, 2), -100, dtype=torch.float32 if binary else torch.long)
    weight = torch.ones(2 if binary else K) if weighted else None
    losses = _all_losses(logits, target, torch.randn(*shape), reduction=reduction, weight=weight)
    expected_shape = (3, 2) if reduction == "none" else ()
    for name, loss in losses.items():
        assert loss.shape == expected_shape, name
        assert torch.equal(loss, torch.zeros(expected_shape)), name
        assert loss.grad_fn is not None, name
        (grad,) = torch.autograd.grad(loss.sum(), logits)
        assert torch.equal(grad, torch.zeros_like(logits)), name


def test_ignored_positions_contribute_nothing_and_none_is_zero_there():
    logits = torch.randn(5, K, requires_grad=True)
    target = torch.tensor([0, -100, 2, -100, 3])
    kept = target != -100
    for name, per_position in _all_losses(
        logits, target, torch.randn(5, K), reduction="none"
    ).items():
        assert torch.equal(per_position[~kept], torch.zeros(2)), name
    means = _all_losses(logits, target, torch.randn(5, K))
    # the mean over the kept rows equals the loss computed on those rows alone
    torch.testing.assert_close(
        means["ce"], cross_entropy_loss(logits[kept], target[kept]), atol=1e-6, rtol=1e-6
    )
    torch.testing.assert_close(
        means["ls"], label_smoothing_loss(logits[kept], target[kept], 0.1), atol=1e-6, rtol=1e-6
    )


def test_custom_ignore_index():
    logits = torch.randn(4, K)
    target = torch.tensor([1, 3, 0, 3])
    ours = cross_entropy_loss(logits, target, ignore_index=3)
    torch.testing.assert_close(ours, tf.cross_entropy(logits, target, ignore_index=3))


@pytest.mark.parametrize("binary", [False, True])
def test_extreme_logits_give_finite_values_and_grads(binary):
    shape = (4,) if binary else (4, K)
    logits = torch.full(shape, -1e4)
    if binary:
        logits[::2] = 1e4
        target = torch.tensor([0.0, 1.0, 1.0, 0.0])
    else:
        logits[:, 0] = 1e4
        target = torch.tensor([0, 1, 2, 0])
    logits.requires_grad_()
    teacher = -logits.detach()
    for name, loss in _all_losses(logits, target, teacher).items():
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(loss), name
        assert torch.isfinite(grad).all(), name
    # the value itself is right: two of four rows have the true class at -1e4 below the max
    ce = cross_entropy_loss(logits.detach(), target)
    expected = 0.5 * 2e4 if not binary else 0.5 * 1e4
    torch.testing.assert_close(ce, torch.tensor(expected))


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("binary", [False, True])
def test_half_precision_is_computed_in_float32(half, binary):
    shape = (6,) if binary else (6, K)
    logits = torch.randn(*shape).to(half).requires_grad_()
    reference = torch.randn(*shape).to(half)
    target = torch.randint(0, 2, (6,)).float() if binary else torch.randint(0, K, (6,))
    logits32 = logits.detach().float().requires_grad_()
    low = _all_losses(logits, target, reference)
    full = _all_losses(logits32, target, reference.float())
    for name in low:
        assert low[name].dtype == torch.float32, name
        torch.testing.assert_close(low[name], full[name], atol=1e-6, rtol=1e-6)
        (grad_low,) = torch.autograd.grad(low[name], logits)
        (grad_full,) = torch.autograd.grad(full[name], logits32)
        assert grad_low.dtype == half
        torch.testing.assert_close(grad_low, grad_full.to(half))


def _raises(error, pattern, call):
    with pytest.raises(error, match=pattern) as info:
        call()
    return str(info.value)


_GENERATOR = torch.Generator().manual_seed(0)
L = torch.randn(3, K, generator=_GENERATOR)
Y = torch.tensor([0, 1, 2])
B = torch.randn(3, generator=_GENERATOR)
BY = torch.tensor([0.0, 1.0, 1.0])
P = torch.full((3, K), 1.0 / K)

ERROR_CASES = {
    "smoothing_high": (
        ValueError,
        r"smoothing.*\[0, 1\).*1\.0",
        lambda: label_smoothing_loss(L, Y, 1.0),
    ),
    "smoothing_negative": (
        ValueError,
        r"smoothing.*-0\.1",
        lambda: label_smoothing_loss(L, Y, -0.1),
    ),
    "smoothing_type": (TypeError, r"smoothing.*'a'", lambda: label_smoothing_loss(L, Y, "a")),
    "alpha_kd": (
        ValueError,
        r"alpha.*\[0, 1\].*1\.5",
        lambda: distillation_loss(L, L, Y, 2.0, 1.5),
    ),
    "alpha_reloop": (ValueError, r"alpha.*-0\.2", lambda: self_correction_loss(L, Y, P, -0.2)),
    "temperature_zero": (
        ValueError,
        r"temperature.*\(0, 1000\].*0",
        lambda: distillation_loss(L, L, Y, 0.0),
    ),
    "temperature_huge": (  # T^2 would overflow float32 and the KL is all rounding
        ValueError,
        r"temperature.*\(0, 1000\].*1e\+20",
        lambda: distillation_loss(L, L, Y, 1e20),
    ),
    "temperature_negative": (
        ValueError,
        r"temperature.*-1",
        lambda: distillation_loss(L, L, Y, -1),
    ),
    "prior_length": (
        ValueError,
        r"prior.*length 4.*\(3,\)",
        lambda: label_smoothing_loss(L, Y, 0.1, prior=[0.2, 0.3, 0.5]),
    ),
    "prior_negative": (
        ValueError,
        r"prior.*non-negative.*-0\.5",
        lambda: label_smoothing_loss(L, Y, 0.1, prior=[1.5, -0.5, 0.0, 0.0]),
    ),
    "prior_sum": (
        ValueError,
        r"prior.*sum to 1.*0\.5",
        lambda: label_smoothing_loss(L, Y, 0.1, prior=[0.5, 0.5, 0.5, 0.5]),
    ),
    "target_high": (
        ValueError,
        r"target.*\[0, 4\).*got 4",
        lambda: cross_entropy_loss(L, torch.tensor([0, 4, 1])),
    ),
    "target_negative": (
        ValueError,
        r"target.*got -1",
        lambda: cross_entropy_loss(L, torch.tensor([0, -1, 1])),
    ),
    "target_float_multiclass": (
        TypeError,
        r"target.*integer dtype.*float32",
        lambda: cross_entropy_loss(L, Y.float()),
    ),
    "binary_target": (
        ValueError,
        r"binary target.*0 or 1.*0\.5",
        lambda: cross_entropy_loss(B, torch.tensor([0.0, 0.5, 1.0])),
    ),
    "shape_mismatch": (
        ValueError,
        r"logits.*\(3, 4\).*target.*\(2,\)",
        lambda: cross_entropy_loss(L, Y[:2]),
    ),
    "one_class_column": (
        ValueError,
        r"logits.*at least 2 classes.*\(3, 1\)",
        lambda: cross_entropy_loss(B[:, None], BY.long()),
    ),
    "logits_nan": (
        ValueError,
        r"logits.*finite.*nan",
        lambda: cross_entropy_loss(torch.tensor([[0.0, float("nan")]]), torch.tensor([0])),
    ),
    "logits_inf": (
        ValueError,
        r"logits.*finite.*inf",
        lambda: label_smoothing_loss(torch.tensor([[0.0, float("inf")]]), torch.tensor([0])),
    ),
    "logits_int": (
        TypeError,
        r"logits.*floating dtype",
        lambda: cross_entropy_loss(Y[:, None].expand(3, 2), Y.clamp(max=1)),
    ),
    "teacher_nan": (
        ValueError,
        r"teacher_logits.*finite",
        lambda: distillation_loss(L, torch.full((3, K), float("nan")), Y),
    ),
    "teacher_shape": (
        ValueError,
        r"teacher_logits.*\(3, 4\).*\(3, 5\)",
        lambda: distillation_loss(L, torch.randn(3, 5), Y),
    ),
    "student_nan": (
        ValueError,
        r"student_logits.*finite",
        lambda: distillation_loss(torch.full((3, K), float("nan")), L, Y),
    ),
    "target_none_alpha": (
        ValueError,
        r"target=None.*alpha=1.*alpha=0\.5",
        lambda: distillation_loss(L, L, None, 2.0, 0.5),
    ),
    "previous_shape": (
        ValueError,
        r"previous.*\(3, 4\).*\(3, 3\)",
        lambda: self_correction_loss(L, Y, P[:, :3]),
    ),
    "previous_range": (
        ValueError,
        r"previous.*\[0, 1\].*1\.5",
        lambda: self_correction_loss(L, Y, P + 1.25),
    ),
    "previous_binary_range": (
        ValueError,
        r"previous.*-0\.5",
        lambda: self_correction_loss(B, BY, torch.tensor([0.1, -0.5, 0.2])),
    ),
    "reduction": (
        ValueError,
        r"reduction.*'mean', 'sum', 'none'.*'avg'",
        lambda: cross_entropy_loss(L, Y, reduction="avg"),
    ),
    "weight_length": (
        ValueError,
        r"weight.*length 4.*\(3,\)",
        lambda: cross_entropy_loss(L, Y, weight=torch.ones(3)),
    ),
    "weight_binary_length": (
        ValueError,
        r"weight.*length 2.*\(4,\)",
        lambda: cross_entropy_loss(B, BY, weight=torch.ones(4)),
    ),
    "weight_negative": (
        ValueError,
        r"weight.*>= 0",
        lambda: cross_entropy_loss(L, Y, weight=torch.tensor([1.0, -1.0, 1.0, 1.0])),
    ),
    "weight_without_target": (
        ValueError,
        r"weight.*target=None",
        lambda: distillation_loss(L, L, None, 2.0, 1.0, weight=torch.ones(K)),
    ),
    "reloop_without_target": (
        ValueError,
        r"target.*required",
        lambda: self_correction_loss(L, None, P),
    ),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_bad_input_raises_naming_argument_and_value(case):
    error, pattern, call = ERROR_CASES[case]
    _raises(error, re.compile(pattern, re.IGNORECASE), call)
