"""decoupled_distillation_loss (DKD, Zhao et al., CVPR 2022) against the paper's TCKD and NCKD
written out here, and the paper's identity KD = TCKD + (1 - p_t,y) NCKD."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from loss_reference import SHAPES, TOL, K, assert_same_values_and_grads, weighted_reduce

from softlabel import SoftTargetLoss
from softlabel.functional import decoupled_distillation_loss, distillation_loss
from softlabel.kernels import fused_soft_target_loss
from softlabel.targets import DecoupledTeacher
from softlabel.targets.decoupled import warmup_schedule


def _tckd_nckd(student, teacher, target, temperature):
    """TCKD = KL(b_t || b_s), b = (p_y, 1 - p_y); NCKD = KL(p^_t || p^_s), p^ = p over k != y
    divided by 1 - p_y; p = softmax(logits / T). Per position, not T^2-scaled."""
    p_s = torch.softmax(student / temperature, -1)
    p_t = torch.softmax(teacher / temperature, -1)
    is_y = torch.nn.functional.one_hot(target, student.shape[-1]).bool()
    s_y, t_y = (p_s * is_y).sum(-1), (p_t * is_y).sum(-1)
    tckd = t_y * torch.log(t_y / s_y) + (1 - t_y) * torch.log((1 - t_y) / (1 - s_y))
    hat_s = p_s / (1 - s_y)[..., None]
    hat_t = p_t / (1 - t_y)[..., None]
    nckd = torch.where(is_y, 0.0, hat_t * torch.log(hat_t / hat_s)).sum(-1)
    return tckd, nckd


def _reference(student, teacher, target, temperature, alpha, beta, ce_weight, reduction, weight):
    mask = target != -100
    safe = torch.where(mask, target, torch.zeros_like(target))
    tckd, nckd = _tckd_nckd(student, teacher, safe, temperature)
    ce = -torch.log_softmax(student, -1).gather(-1, safe[..., None])[..., 0]
    per = ce_weight * ce + temperature**2 * (alpha * tckd + beta * nckd)
    sample_weight = mask.to(student.dtype)
    if weight is not None:
        sample_weight = sample_weight * weight[safe]
    return weighted_reduce(per, sample_weight, reduction)


def _inputs(shape, dtype, seed=0, k=K, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(*shape, k, generator=gen, dtype=torch.float64) * scale
    teacher = torch.randn(*shape, k, generator=gen, dtype=torch.float64) * scale
    target = torch.randint(0, k, shape, generator=gen)
    target.view(-1)[::3] = -100
    return student.to(dtype).requires_grad_(), teacher.to(dtype), target


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    ("temperature", "alpha", "beta", "ce_weight", "weighted"),
    [(4.0, 1.0, 8.0, 1.0, False), (1.0, 0.5, 2.0, 0.0, True), (2.0, 2.0, 0.5, 0.3, True)],
)
def test_matches_the_papers_tckd_and_nckd(
    dtype, shape, reduction, temperature, alpha, beta, ce_weight, weighted
):
    student, teacher, target = _inputs(shape, dtype)
    weight = torch.rand(K, dtype=dtype) + 0.1 if weighted else None
    ours = decoupled_distillation_loss(
        student, teacher, target, temperature, alpha, beta, ce_weight,
        reduction=reduction, weight=weight,
    )  # fmt: skip
    reference = _reference(
        student, teacher, target, temperature, alpha, beta, ce_weight, reduction, weight
    )
    assert_same_values_and_grads(ours, reference, [student], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [2, 3, 300])
def test_kernel_over_several_chunks(dtype, k):
    student, teacher, target = _inputs((17,), dtype, seed=1, k=k)
    ours = fused_soft_target_loss(
        student, target, mode="dkd", teacher=teacher, temperature=3.0, tckd_weight=1.5,
        nckd_weight=4.0, ce_weight=0.5, chunk_rows=4,
    )  # fmt: skip
    reference = _reference(student, teacher, target, 3.0, 1.5, 4.0, 0.5, "none", None)
    assert_same_values_and_grads(ours, reference, [student], dtype)


def test_two_classes_have_no_nckd():
    student, teacher, target = _inputs((6,), torch.float64, k=2)
    ours = decoupled_distillation_loss(student, teacher, target, 2.0, 1.0, 8.0, 0.0)
    torch.testing.assert_close(ours, distillation_loss(student, teacher, target, 2.0, 1.0))


@settings(max_examples=25, deadline=None)
@given(
    k=st.integers(2, 7),
    temperature=st.floats(0.5, 8.0),
    scale=st.floats(0.1, 8.0),
    seed=st.integers(0, 2**16),
)
def test_property_kd_is_tckd_plus_teacher_non_target_mass_times_nckd(k, temperature, scale, seed):
    """The paper's Eq. (1): KD = TCKD + (1 - p_t,y^T) NCKD, per position."""
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(5, k, dtype=torch.float64, generator=gen) * scale
    teacher = torch.randn(5, k, dtype=torch.float64, generator=gen) * scale
    target = torch.randint(0, k, (5,), generator=gen)

    def dkd(alpha, beta):
        return decoupled_distillation_loss(
            student, teacher, target, temperature, alpha, beta, 0.0, reduction="none"
        )

    tckd, nckd = dkd(1.0, 0.0), dkd(0.0, 1.0)
    assert (tckd >= -1e-12).all() and (nckd >= -1e-12).all()
    kd = distillation_loss(student, teacher, None, temperature, 1.0, reduction="none")
    teacher_rest = 1 - torch.softmax(teacher / temperature, -1).gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(kd, tckd + teacher_rest * nckd, atol=1e-9, rtol=1e-9)
    zero = decoupled_distillation_loss(teacher, teacher.clone(), target, temperature, 1.0, 8.0, 0.0)
    torch.testing.assert_close(zero, torch.zeros((), dtype=torch.float64), atol=1e-12, rtol=0)


def test_gradcheck_and_double_backward():
    student, teacher, target = _inputs((1, 3), torch.float64, seed=2)
    weight = torch.tensor([0.5, 1.0, 2.0, 1.5, 1.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: decoupled_distillation_loss(
            x, teacher, target, 2.0, 1.0, 3.0, 0.5, weight=weight
        ),
        (student,),
    )
    small = student[0, :2].detach().requires_grad_()
    assert torch.autograd.gradgradcheck(
        lambda x: decoupled_distillation_loss(x, teacher[0, :2], target[0, :2], 2.0, 1.0, 3.0),
        (small,),
    )


def test_large_logits_stay_finite_and_half_precision_is_float32():
    student, teacher, target = _inputs((6,), torch.float32, scale=1e4)
    loss = decoupled_distillation_loss(student, teacher, target)
    (grad,) = torch.autograd.grad(loss, student)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    student, teacher, target = _inputs((6,), torch.float32)
    full = decoupled_distillation_loss(student, teacher, target)
    half = decoupled_distillation_loss(
        student.detach().bfloat16().requires_grad_(), teacher.bfloat16(), target
    )
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, atol=0.1, rtol=0.05)


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (lambda s, t, y: decoupled_distillation_loss(s, t, None), "target is required"),
        (
            lambda s, t, y: decoupled_distillation_loss(s, t, torch.softmax(s.detach(), -1)),
            "needs class indices",
        ),
        (
            lambda s, t, y: decoupled_distillation_loss(s[:, 0], t[:, 0], (y > 1).float()),
            "no binary form.*distillation_loss\\(binary=True\\)",
        ),
        (lambda s, t, y: decoupled_distillation_loss(s, t, y, alpha=-1.0), "alpha .*>= 0.*-1"),
        (lambda s, t, y: decoupled_distillation_loss(s, t, y, beta=float("nan")), "beta .*nan"),
        (lambda s, t, y: decoupled_distillation_loss(s, t, y, ce_weight=float("inf")), "ce_weight"),
        (lambda s, t, y: decoupled_distillation_loss(s, t, y, temperature=0.0), "temperature"),
    ],
)
def test_bad_input_is_refused_naming_it(call, pattern):
    student, teacher, target = _inputs((4,), torch.float32)
    with pytest.raises(ValueError, match=pattern):
        call(student, teacher, target.clamp_min(0))


def test_source_matches_the_functional_form_and_checks_its_weights():
    student, teacher, target = _inputs((2, 3), torch.float64)
    source = DecoupledTeacher(2.0, 1.5, 4.0, 0.7)
    assert source.name == "dkd" and source.reference == "teacher_logits"
    expected = decoupled_distillation_loss(student, teacher, target, 2.0, 1.5, 4.0, 0.7)
    assert_same_values_and_grads(
        SoftTargetLoss(source)(student, target, teacher), expected, [student], torch.float64
    )
    with pytest.raises(ValueError, match="beta must be a finite number >= 0, got -1"):
        DecoupledTeacher(beta=-1.0)


@pytest.mark.parametrize(("epochs", "steps"), [(240, 7), (30, 3), (5, 4), (1, 2)])
def test_warmup_schedule_gives_mdistillers_factor_every_epoch(epochs, steps):
    """mdistiller: min(epoch / 20, 1) * beta in epoch 1, 2, ...; progress = step / total."""
    schedule = warmup_schedule(8.0, epochs)
    total = epochs * steps
    for step in range(total):
        epoch = step // steps + 1
        assert schedule(step / total) == pytest.approx(8.0 * min(epoch / 20, 1.0), abs=1e-12)
    source = DecoupledTeacher(alpha=warmup_schedule(1.0, epochs), beta=schedule)
    source.set_progress(0.0)
    assert source.values()["beta"] == pytest.approx(0.4, **{"abs": TOL[torch.float64]["atol"]})
