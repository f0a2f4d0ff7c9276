"""virtual_teacher_loss / VirtualTeacher (Tf-KD_reg) against the paper's formula written out."""

import math

import pytest
import torch
import torch.nn.functional as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from loss_reference import SHAPES, K, assert_same_values_and_grads, weighted_reduce

from softlabel import SoftTargetLoss
from softlabel.functional import virtual_teacher_loss
from softlabel.schedules import Linear
from softlabel.targets import VirtualTeacher


def _reference(logits, target, a, temperature, alpha, reduction, weight):
    """Yuan et al. (2020): q(y) = a, q(k) = (1 - a)/(K - 1); the teacher's logits are log q,
    softened as softmax(log q / T) = q^(1/T) / sum q^(1/T); T^2 KL to softmax(s/T)."""
    k = logits.shape[-1]
    mask = target != -100
    safe = torch.where(mask, target, torch.zeros_like(target))
    onehot = tf.one_hot(safe, k).to(logits.dtype)
    q = onehot * a + (1 - onehot) * (1 - a) / (k - 1)
    q_t = q ** (1 / temperature)
    q_t = q_t / q_t.sum(-1, keepdim=True)
    log_p_t = torch.log_softmax(logits / temperature, -1)
    kl = (q_t * (torch.log(q_t) - log_p_t)).sum(-1)
    ce = -(onehot * torch.log_softmax(logits, -1)).sum(-1)
    sample_weight = mask.to(logits.dtype)
    if weight is not None:
        sample_weight = sample_weight * weight[safe]
    per = (1 - alpha) * ce + alpha * temperature**2 * kl
    return weighted_reduce(torch.where(mask, per, torch.zeros_like(per)), sample_weight, reduction)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(("weighted", "temperature"), [(False, 1.0), (True, 4.0)])
def test_matches_written_out_formula(dtype, shape, reduction, weighted, temperature):
    logits = (torch.randn(*shape, K, dtype=dtype) * 3).requires_grad_()
    target = torch.randint(0, K, shape)
    target.view(-1)[::4] = -100
    weight = torch.rand(K, dtype=dtype) + 0.1 if weighted else None
    ours = virtual_teacher_loss(
        logits, target, 0.8, temperature, 0.7, reduction=reduction, weight=weight
    )
    reference = _reference(logits, target, 0.8, temperature, 0.7, reduction, weight)
    assert_same_values_and_grads(ours, reference, [logits], dtype)


def test_paper_temperature_in_float64_and_float32():
    """T = 20 (the paper's): exact in float64; in float32 the T^2 = 400 factor scales the
    KL's rounding, so float32 is compared with the float64 value at float32's relative
    precision times a few hundred."""
    logits = torch.randn(3, 4, K, dtype=torch.float64) * 3
    target = torch.randint(0, K, (3, 4))
    target[0, 1] = -100
    x = logits.clone().requires_grad_()
    ours = virtual_teacher_loss(x, target, 0.9, 20.0, 0.9)
    reference = _reference(x, target, 0.9, 20.0, 0.9, "mean", None)
    assert_same_values_and_grads(ours, reference, [x], torch.float64)
    single = virtual_teacher_loss(logits.float(), target, 0.9, 20.0, 0.9)
    torch.testing.assert_close(single.double(), reference.detach(), rtol=1e-4, atol=1e-5)


def test_softened_teacher_has_the_closed_form():
    """softmax(log q / T): a^(1/T) / Z on y and b^(1/T) / Z elsewhere, Z = a^(1/T) + (K-1) b^(1/T)."""
    a, t, k = 0.9, 20.0, K
    b = (1 - a) / (k - 1)
    z = a ** (1 / t) + (k - 1) * b ** (1 / t)
    target = torch.tensor([3])
    # the student logits log of that distribution (times T) make the KL term vanish
    soft = torch.full((1, k), b ** (1 / t) / z, dtype=torch.float64)
    soft[0, 3] = a ** (1 / t) / z
    logits = torch.log(soft) * t
    pure = virtual_teacher_loss(logits, target, a, t, alpha=1.0)
    torch.testing.assert_close(pure, torch.zeros((), dtype=torch.float64), atol=1e-12, rtol=0)


def test_source_equals_functional_and_schedules():
    logits = torch.randn(2, 3, K, requires_grad=True)
    target = torch.randint(0, K, (2, 3))
    source = VirtualTeacher(correct_prob=Linear(0.9, 0.6), temperature=4.0, alpha=0.5)
    source.set_progress(0.5)
    assert source.values() == pytest.approx(
        {"correct_prob": 0.75, "temperature": 4.0, "alpha": 0.5}
    )
    assert source.name == "tf_kd" and source.reference is None
    ours = SoftTargetLoss(source)(logits, target)
    torch.testing.assert_close(ours, virtual_teacher_loss(logits, target, 0.75, 4.0, 0.5))


def test_binary_matches_bernoulli_teacher():
    """Binary: the teacher puts a on the label, i.e. logit +-log(a / (1 - a))."""
    logits = torch.randn(7, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0.0, 1.0, 1.0, -100.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    a, t, alpha = 0.8, 3.0, 0.6
    mask = target != -100
    label = torch.where(mask, target, torch.zeros_like(target))
    q1 = label * a + (1 - label) * (1 - a)  # teacher P(y=1)
    q_t = q1 ** (1 / t) / (q1 ** (1 / t) + (1 - q1) ** (1 / t))
    p_t = torch.sigmoid(logits / t)
    kl = q_t * torch.log(q_t / p_t) + (1 - q_t) * torch.log((1 - q_t) / (1 - p_t))
    bce = tf.binary_cross_entropy_with_logits(logits, label, reduction="none")
    per = torch.where(mask, (1 - alpha) * bce + alpha * t * t * kl, torch.zeros_like(bce))
    reference = per.sum() / mask.sum()
    ours = virtual_teacher_loss(logits, target, a, t, alpha)
    assert_same_values_and_grads(ours, reference, [logits], torch.float64)


def test_gradcheck_three_dimensional():
    logits = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[0, 3, -100], [2, 1, 1]])
    assert torch.autograd.gradcheck(
        lambda x: virtual_teacher_loss(x, target, 0.7, 5.0, 0.4), (logits,)
    )


@pytest.mark.parametrize("bad", [0.2, 1 / K, 1.0, 1.5, -0.1])
def test_correct_prob_outside_one_over_k_to_one_is_refused(bad):
    logits = torch.randn(3, K)
    target = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match=r"correct_prob must be in \(1/K, 1\).*" + str(bad)):
        virtual_teacher_loss(logits, target, bad)


def test_bad_construction_and_targets_are_refused():
    with pytest.raises(ValueError, match=r"correct_prob must be in \(0, 1\), got 1.5"):
        VirtualTeacher(correct_prob=1.5)
    with pytest.raises(ValueError, match="correct_prob"):
        VirtualTeacher(correct_prob=Linear(0.9, 1.0))  # 1.0 at progress 1
    logits = torch.randn(3, K)
    with pytest.raises(ValueError, match="class indices"):
        virtual_teacher_loss(logits, torch.softmax(torch.randn(3, K), -1))
    with pytest.raises(ValueError, match="target=None"):
        virtual_teacher_loss(logits, None)
    with pytest.raises(ValueError, match="temperature"):
        virtual_teacher_loss(logits, torch.tensor([0, 1, 2]), 0.9, 0.0)
    binary = torch.randn(4)
    with pytest.raises(ValueError, match=r"correct_prob must be in \(1/K, 1\).*K=2"):
        virtual_teacher_loss(binary, torch.tensor([0.0, 1.0, 1.0, 0.0]), 0.5)


@settings(max_examples=15, deadline=None)
@given(
    k=st.integers(2, 8),
    a_frac=st.floats(0.01, 0.99),
    temperature=st.floats(0.5, 30.0),
    seed=st.integers(0, 2**16),
)
def test_property_soft_term_is_non_negative_and_zero_at_the_teacher(k, a_frac, temperature, seed):
    """Pure Tf-KD (alpha = 1) is a scaled KL: >= 0, and 0 for student logits log q + c."""
    a = 1 / k + a_frac * (1 - 1 / k)
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(5, k, generator=generator, dtype=torch.float64) * 4
    target = torch.randint(0, k, (5,), generator=generator)
    loss = virtual_teacher_loss(logits, target, a, temperature, 1.0, reduction="none")
    assert bool((loss >= -1e-12).all())
    teacher = torch.full((5, k), math.log((1 - a) / (k - 1)), dtype=torch.float64)
    teacher[torch.arange(5), target] = math.log(a)
    at_teacher = virtual_teacher_loss(teacher + 3.0, target, a, temperature, 1.0)
    assert abs(at_teacher.item()) < 1e-9
