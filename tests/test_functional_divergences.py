"""distillation_loss with reverse KL, generalized JSD (GKD, as TRL computes it), total variation
and logit standardization (Sun et al., CVPR 2024), against the formulas written out here."""

import pytest
import torch
import torch.nn.functional as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from loss_reference import SHAPES, TOL, K, assert_same_values_and_grads, weighted_reduce

from softlabel import SoftTargetLoss
from softlabel.functional import distillation_loss
from softlabel.kernels import fused_soft_target_loss
from softlabel.targets import Teacher

DIVERGENCES = ["forward_kl", "reverse_kl", "jsd", "tvd"]


def _z_score(x):
    """The paper's normalize(): (x - mean) / (1e-7 + std), std with Bessel's correction."""
    return (x - x.mean(-1, keepdim=True)) / (1e-7 + x.std(-1, keepdim=True))


def _divergence(p_t, p_s, divergence, beta):
    """D(p_t, p_s) per position from probabilities."""
    if divergence == "forward_kl" or (divergence == "jsd" and beta == 0.0):
        return (p_t * torch.log(p_t / p_s)).sum(-1)
    if divergence == "reverse_kl" or (divergence == "jsd" and beta == 1.0):
        return (p_s * torch.log(p_s / p_t)).sum(-1)
    if divergence == "tvd":
        return 0.5 * (p_t - p_s).abs().sum(-1)
    m = beta * p_t + (1 - beta) * p_s
    return beta * (p_t * torch.log(p_t / m)).sum(-1) + (1 - beta) * (p_s * torch.log(p_s / m)).sum(
        -1
    )


def _reference(student, teacher, target, temperature, alpha, divergence, beta, standardize,
               reduction="mean", weight=None):  # fmt: skip
    """(1 - alpha) CE(raw s, y) + alpha T^2 D(softmax(t'/T), softmax(s'/T)), t', s' z-scored
    when ``standardize``."""
    s, t = (_z_score(student), _z_score(teacher)) if standardize else (student, teacher)
    p_s, p_t = torch.softmax(s / temperature, -1), torch.softmax(t / temperature, -1)
    soft = temperature**2 * _divergence(p_t, p_s, divergence, beta)
    if target is None:
        return weighted_reduce(soft, torch.ones_like(soft), reduction)
    mask = target != -100
    safe = torch.where(mask, target, torch.zeros_like(target))
    hard = -torch.log_softmax(student, -1).gather(-1, safe[..., None])[..., 0]
    sample_weight = mask.to(student.dtype)
    if weight is not None:
        sample_weight = sample_weight * weight[safe]
    return weighted_reduce((1 - alpha) * hard + alpha * soft, sample_weight, reduction)


def _inputs(shape, dtype, seed=0, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(*shape, K, generator=gen, dtype=torch.float64) * scale
    teacher = torch.randn(*shape, K, generator=gen, dtype=torch.float64) * scale
    target = torch.randint(0, K, shape, generator=gen)
    target.view(-1)[::3] = -100
    return student.to(dtype).requires_grad_(), teacher.to(dtype), target


#: (N, K) and token-level (B, T, V) logits; every reduction on the token-level ones
SHAPE_REDUCTIONS = [(SHAPES[0], "mean")] + [(SHAPES[1], r) for r in ("mean", "sum", "none")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("shape", "reduction"), SHAPE_REDUCTIONS)
@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("standardize", [False, True])
def test_matches_the_written_out_formula(dtype, shape, reduction, divergence, standardize):
    student, teacher, target = _inputs(shape, dtype)
    weight = torch.rand(K, dtype=dtype) + 0.1
    beta = 0.3 if divergence == "jsd" else 0.5
    kwargs = {"divergence": divergence, "beta": beta, "standardize": standardize}
    ours = distillation_loss(
        student, teacher, target, 3.0, 0.7, reduction=reduction, weight=weight, **kwargs
    )
    reference = _reference(
        student, teacher, target, 3.0, 0.7, divergence, beta, standardize, reduction, weight
    )
    assert_same_values_and_grads(ours, reference, [student], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_jsd_over_beta_without_target(dtype, beta, temperature):
    student, teacher, _ = _inputs((2, 3), dtype, seed=1)
    ours = distillation_loss(student, teacher, None, temperature, 1.0, divergence="jsd", beta=beta)
    reference = _reference(student, teacher, None, temperature, 1.0, "jsd", beta, False)
    assert_same_values_and_grads(ours, reference, [student], dtype)


def test_jsd_at_the_ends_of_beta_is_the_forward_and_reverse_kl():
    student, teacher, target = _inputs((6,), torch.float64)
    for beta, divergence in ((0.0, "forward_kl"), (1.0, "reverse_kl")):
        torch.testing.assert_close(
            distillation_loss(student, teacher, target, 2.0, 0.5, divergence="jsd", beta=beta),
            distillation_loss(student, teacher, target, 2.0, 0.5, divergence=divergence),
        )


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_over_several_chunks_with_probability_targets(divergence, standardize, dtype):
    student, teacher, _ = _inputs((23,), dtype, seed=2)
    c = torch.softmax(torch.randn(23, K, dtype=dtype), -1)
    beta = 0.6 if divergence == "jsd" else 0.5
    ours = distillation_loss(
        student, teacher, c, 2.0, 0.4, divergence=divergence, beta=beta, standardize=standardize
    )
    s, t = (_z_score(student), _z_score(teacher)) if standardize else (student, teacher)
    soft = _divergence(torch.softmax(t / 2.0, -1), torch.softmax(s / 2.0, -1), divergence, beta)
    hard = -(c * torch.log_softmax(student, -1)).sum(-1)
    reference = (0.6 * hard + 0.4 * 4.0 * soft).mean()
    assert_same_values_and_grads(ours, reference, [student], dtype)
    y = torch.randint(0, K, (23,))
    y[::5] = -100
    kernel = fused_soft_target_loss(
        student, y, mode="kd", teacher=teacher, temperature=2.0, alpha=0.4,
        divergence=divergence, beta=beta, standardize=standardize, chunk_rows=4,
    )  # fmt: skip
    reference = _reference(student, teacher, y, 2.0, 0.4, divergence, beta, standardize, "none")
    assert_same_values_and_grads(kernel, reference, [student], dtype)


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("standardize", [False, True])
def test_gradcheck_and_double_backward(divergence, standardize):
    student, teacher, target = _inputs((1, 3), torch.float64, seed=3)
    kwargs = {"divergence": divergence, "beta": 0.4 if divergence == "jsd" else 0.5}
    kwargs["standardize"] = standardize
    weight = torch.tensor([0.5, 1.0, 2.0, 1.5, 1.0], dtype=torch.float64)

    def loss(x):
        return distillation_loss(x, teacher, target, 2.0, 0.6, weight=weight, **kwargs)

    assert torch.autograd.gradcheck(loss, (student,))
    small = student[0, :2].detach().requires_grad_()  # double backward: the plain formula
    assert torch.autograd.gradgradcheck(
        lambda x: distillation_loss(x, teacher[0, :2], target[0, :2], 2.0, 0.6, **kwargs),
        (small,),
    )


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_half_precision_matches_float32(divergence):
    student, teacher, target = _inputs((8,), torch.float32, seed=4)
    kwargs = {"divergence": divergence, "standardize": True}
    full = distillation_loss(student, teacher, target, 2.0, 0.5, **kwargs)
    half = distillation_loss(
        student.detach().bfloat16().requires_grad_(), teacher.bfloat16(), target, 2.0, 0.5,
        **kwargs,
    )  # fmt: skip
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_large_logits_stay_finite(divergence):
    student, teacher, target = _inputs((6,), torch.float32, scale=1e4)
    loss = distillation_loss(student, teacher, target, 2.0, 0.5, divergence=divergence)
    (grad,) = torch.autograd.grad(loss, student)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_standardized_constant_row_has_the_limit_gradient():
    """A constant student row has std 0 (z = 0): the std term's contribution tends to 0, so
    the gradient is alpha T (r - q) / 1e-7 (forward KL, r uniform)."""
    student = torch.zeros(1, K, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(1, K, dtype=torch.float64)
    loss = distillation_loss(student, teacher, None, 2.0, 1.0, standardize=True)
    (grad,) = torch.autograd.grad(loss, student)
    q = torch.softmax(_z_score(teacher) / 2.0, -1)
    torch.testing.assert_close(grad, 2.0 * (1.0 / K - q) / 1e-7)


# ------------------------------------------------------------------ properties
@settings(max_examples=20, deadline=None)
@given(
    k=st.integers(2, 6),
    temperature=st.floats(0.5, 8.0),
    scale=st.floats(0.1, 10.0),
    seed=st.integers(0, 2**16),
    standardize=st.booleans(),
)
def test_property_divergences_are_non_negative_and_zero_at_the_teacher(
    k, temperature, scale, seed, standardize
):
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(3, k, dtype=torch.float64, generator=gen) * scale
    teacher = torch.randn(3, k, dtype=torch.float64, generator=gen) * scale
    for divergence in DIVERGENCES:
        kwargs = {"divergence": divergence, "standardize": standardize, "reduction": "none"}
        if divergence == "jsd":
            kwargs["beta"] = 0.3
        loss = distillation_loss(student, teacher, None, temperature, 1.0, **kwargs)
        assert (loss >= -1e-12).all(), divergence
        same = distillation_loss(teacher, teacher.clone(), None, temperature, 1.0, **kwargs)
        torch.testing.assert_close(same, torch.zeros_like(same), atol=1e-12, rtol=0)
        if divergence == "tvd":  # TVD <= 1 before the T^2 scale
            assert (loss / temperature**2 <= 1.0 + 1e-12).all()


@settings(max_examples=20, deadline=None)
@given(k=st.integers(2, 6), scale=st.floats(0.1, 10.0), seed=st.integers(0, 2**16))
def test_property_jsd_is_symmetric_at_beta_one_half(k, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(4, k, dtype=torch.float64, generator=gen) * scale
    b = torch.randn(4, k, dtype=torch.float64, generator=gen) * scale
    kwargs = {"divergence": "jsd", "beta": 0.5, "reduction": "none"}
    torch.testing.assert_close(
        distillation_loss(a, b, None, 2.0, 1.0, **kwargs),
        distillation_loss(b, a, None, 2.0, 1.0, **kwargs),
    )
    asymmetric = {"divergence": "jsd", "beta": 0.2, "reduction": "none"}
    assert not torch.allclose(
        distillation_loss(a, b, None, 2.0, 1.0, **asymmetric),
        distillation_loss(b, a, None, 2.0, 1.0, **asymmetric),
    )


# ------------------------------------------------------------------ binary
def _binary_divergence(p_t, p_s, divergence, beta):
    """Bernoulli forms: a binary logit is the 2-class distribution (1 - p, p)."""
    t, s = torch.stack([p_t, 1 - p_t], -1), torch.stack([p_s, 1 - p_s], -1)
    return _divergence(t, s, divergence, beta)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_binary_bernoulli_forms(dtype, divergence, reduction):
    student = torch.randn(2, 4, dtype=dtype, requires_grad=True)
    teacher = torch.randn(2, 4, dtype=dtype)
    target = torch.tensor([[0.0, 1.0, -100.0, 1.0], [1.0, 0.0, 0.0, 1.0]], dtype=dtype)
    weight = torch.tensor([2.0, 0.5], dtype=dtype)
    beta = 0.3 if divergence == "jsd" else 0.5
    ours = distillation_loss(
        student, teacher, target, 2.5, 0.6, divergence=divergence, beta=beta,
        reduction=reduction, weight=weight, binary=True,
    )  # fmt: skip
    soft = _binary_divergence(
        torch.sigmoid(teacher / 2.5), torch.sigmoid(student / 2.5), divergence, beta
    )
    mask = target != -100
    label = torch.where(mask, target, torch.zeros_like(target))
    hard = tf.binary_cross_entropy_with_logits(student, label, reduction="none")
    sample_weight = mask.to(dtype) * weight[label.long()]
    reference = weighted_reduce(0.4 * hard + 0.6 * 6.25 * soft, sample_weight, reduction)
    assert_same_values_and_grads(ours, reference, [student], dtype)


def test_binary_has_no_standardization():
    with pytest.raises(ValueError, match="standardize=True needs multiclass logits"):
        distillation_loss(torch.randn(4), torch.randn(4), None, 2.0, 1.0, standardize=True)


# ------------------------------------------------------------------ bad input and the source
@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"divergence": "kl"}, ValueError, r"divergence must be one of .*forward_kl.*got 'kl'"),
        ({"divergence": "jsd", "beta": 1.5}, ValueError, r"beta must be in \[0, 1\], got 1\.5"),
        ({"divergence": "jsd", "beta": -0.1}, ValueError, r"beta must be in \[0, 1\], got -0\.1"),
        ({"beta": 0.3}, ValueError, r"beta is only used by divergence='jsd'.*0\.3.*forward_kl"),
        ({"standardize": 1}, TypeError, r"standardize must be True or False, got 1"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, pattern):
    student, teacher, target = _inputs((4,), torch.float32)
    with pytest.raises(error, match=pattern):
        distillation_loss(student, teacher, target, **kwargs)
    with pytest.raises(error, match=pattern):
        Teacher(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({}, "kd"),
        ({"divergence": "reverse_kl"}, "kd_reverse"),
        ({"divergence": "jsd", "beta": 0.2}, "kd_jsd"),
        ({"divergence": "tvd"}, "kd_tvd"),
        ({"standardize": True}, "kd_std"),
        ({"divergence": "tvd", "standardize": True}, "kd_tvd_std"),
    ],
)
def test_teacher_source_matches_the_functional_form(kwargs, name):
    student, teacher, target = _inputs((2, 3), torch.float64)
    source = Teacher(3.0, 0.6, **kwargs)
    assert source.name == name
    expected = distillation_loss(student, teacher, target, 3.0, 0.6, **kwargs)
    assert_same_values_and_grads(
        SoftTargetLoss(source)(student, target, teacher), expected, [student], torch.float64
    )


def test_teacher_beta_follows_a_schedule():
    source = Teacher(2.0, 1.0, divergence="jsd", beta={"kind": "linear", "start": 0.0, "end": 1.0})
    assert "divergence='jsd'" in repr(source)
    student, teacher, target = _inputs((5,), torch.float64)
    source.set_progress(0.25)
    assert source.values()["beta"] == pytest.approx(0.25)
    torch.testing.assert_close(
        source.loss(student, target, teacher),
        distillation_loss(student, teacher, target, 2.0, 1.0, divergence="jsd", beta=0.25),
        **TOL[torch.float64],
    )
