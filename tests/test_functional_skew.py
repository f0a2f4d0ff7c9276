"""DistiLLM's skew divergences (Ko et al., ICML 2024) against their formulas written out here:
skew forward KL(p_t || a p_t + (1 - a) p_s), skew reverse KL(p_s || (1 - a) p_t + a p_s),
at temperature T with (1 - alpha) CE + alpha T^2 D, on logits, the linear head, top-k
references and binary logits; and the refusals of a bad skew."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from loss_reference import assert_same_values_and_grads

from softlabel import LinearSoftTargetLoss, SoftTargetLoss
from softlabel.functional import (
    distillation_loss,
    linear_distillation_loss,
    topk_distillation_loss,
)
from softlabel.targets import Teacher, TopKLogits

K = 7


def skew_kl(p_t: torch.Tensor, p_s: torch.Tensor, skew: float, reverse: bool) -> torch.Tensor:
    """The two skew KLs over the last dimension, from probabilities, as the paper writes them."""
    if reverse:
        mixture = (1 - skew) * p_t + skew * p_s
        return (p_s * (p_s.log() - mixture.log())).sum(-1)
    mixture = skew * p_t + (1 - skew) * p_s
    return (p_t * (p_t.log() - mixture.log())).sum(-1)


def reference(student, teacher, target, temperature, alpha, skew, reverse, reduction="mean"):
    """(1 - alpha) CE + alpha T^2 D per position (ignore_index -100), reduced."""
    p_t = F.softmax(teacher / temperature, -1)
    p_s = F.softmax(student / temperature, -1)
    soft = temperature**2 * skew_kl(p_t, p_s, skew, reverse)
    mask = target != -100
    safe = target.masked_fill(~mask, 0)
    ce = F.cross_entropy(student.reshape(-1, K), safe.reshape(-1), reduction="none")
    per = ((1 - alpha) * ce.view(target.shape) + alpha * soft) * mask
    if reduction == "none":
        return per
    return per.sum() / mask.sum() if reduction == "mean" else per.sum()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("skew", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_logits_match_the_formula(dtype, reverse, skew, reduction):
    student = (torch.randn(3, 4, K, dtype=dtype) * 3).requires_grad_()
    teacher = torch.randn(3, 4, K, dtype=dtype) * 3
    target = torch.randint(0, K, (3, 4))
    target[0, 1] = -100
    divergence = "skew_reverse_kl" if reverse else "skew_forward_kl"
    ours = distillation_loss(
        student, teacher, target, 2.0, 0.8, divergence=divergence, skew=skew, reduction=reduction
    )
    ref = reference(student, teacher, target, 2.0, 0.8, skew, reverse, reduction)
    assert_same_values_and_grads(ours, ref, [student], dtype)


@pytest.mark.parametrize("reverse", [False, True])
def test_source_and_config_name(reverse):
    divergence = "skew_reverse_kl" if reverse else "skew_forward_kl"
    source = Teacher(1.0, 0.5, divergence=divergence, skew=0.25)
    assert source.name == ("kd_skew_reverse" if reverse else "kd_skew")
    assert source.values() == {"temperature": 1.0, "alpha": 0.5, "skew": 0.25}
    student = torch.randn(5, K, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(5, K, dtype=torch.float64)
    target = torch.randint(0, K, (5,))
    ours = SoftTargetLoss(source)(student, target, teacher)
    ref = reference(student, teacher, target, 1.0, 0.5, 0.25, reverse)
    assert_same_values_and_grads(ours, ref, [student], torch.float64)


@pytest.mark.parametrize("reverse", [False, True])
def test_skew_zero_is_the_plain_kl(reverse):
    student = torch.randn(6, K, dtype=torch.float64)
    teacher = torch.randn(6, K, dtype=torch.float64)
    target = torch.randint(0, K, (6,))
    skewed = "skew_reverse_kl" if reverse else "skew_forward_kl"
    plain = "reverse_kl" if reverse else "forward_kl"
    ours = distillation_loss(student, teacher, target, 3.0, 0.5, divergence=skewed, skew=0.0)
    torch.testing.assert_close(
        ours, distillation_loss(student, teacher, target, 3.0, 0.5, divergence=plain)
    )


@pytest.mark.parametrize("reverse", [False, True])
def test_linear_head_with_a_live_teacher_head(reverse):
    hidden = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(K, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(K, dtype=torch.float64, requires_grad=True)
    t_hidden, t_weight = (
        torch.randn(9, 3, dtype=torch.float64),
        torch.randn(K, 3, dtype=torch.float64),
    )
    target = torch.randint(0, K, (9,))
    divergence = "skew_reverse_kl" if reverse else "skew_forward_kl"
    ours = linear_distillation_loss(
        hidden,
        weight,
        target,
        bias,
        teacher_hidden=t_hidden,
        teacher_weight=t_weight,
        temperature=1.5,
        alpha=0.7,
        divergence=divergence,
        skew=0.3,
        chunk_rows=4,
    )
    ref = reference(
        F.linear(hidden, weight, bias), t_hidden @ t_weight.T, target, 1.5, 0.7, 0.3, reverse
    )
    assert_same_values_and_grads(ours, ref, [hidden, weight, bias], torch.float64)


@pytest.mark.parametrize("reverse", [False, True])
def test_topk_buckets_match_the_formula_on_the_buckets(reverse):
    """On a top-k reference both sides are the k + 1 bucket distributions: the student's
    kept logits and the log-sum-exp of the rest, the teacher's log-probabilities and tail."""
    student = (torch.randn(8, K, dtype=torch.float64) * 2).requires_grad_()
    teacher = torch.randn(8, K, dtype=torch.float64) * 2
    ref_topk = TopKLogits.from_logits(teacher, 3)
    target = torch.randint(0, K, (8,))
    divergence = "skew_reverse_kl" if reverse else "skew_forward_kl"
    ours = topk_distillation_loss(
        student, ref_topk, target, 2.0, 0.6, divergence=divergence, skew=0.2
    )
    index, logprob, tail = ref_topk
    rest = torch.ones_like(student, dtype=torch.bool).scatter(1, index, False)
    student_buckets = torch.cat(
        [
            student.gather(1, index),
            torch.logsumexp(student.masked_fill(~rest, -math.inf), 1, keepdim=True),
        ],
        1,
    )
    teacher_buckets = torch.cat([logprob, tail[:, None]], 1)
    p_t = F.softmax(teacher_buckets / 2.0, -1)
    p_s = F.softmax(student_buckets / 2.0, -1)
    soft = 4.0 * skew_kl(p_t, p_s, 0.2, reverse)
    ref = (0.4 * F.cross_entropy(student, target, reduction="none") + 0.6 * soft).mean()
    assert_same_values_and_grads(ours, ref, [student], torch.float64)


@pytest.mark.parametrize("reverse", [False, True])
def test_binary_is_the_two_bucket_form(reverse):
    student = torch.randn(10, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(10, dtype=torch.float64)
    target = torch.randint(0, 2, (10,)).double()
    divergence = "skew_reverse_kl" if reverse else "skew_forward_kl"
    ours = distillation_loss(student, teacher, target, 2.0, 0.5, divergence=divergence, skew=0.4)
    p_t = torch.stack([torch.sigmoid(teacher / 2), torch.sigmoid(-teacher / 2)], -1)
    p_s = torch.stack([torch.sigmoid(student / 2), torch.sigmoid(-student / 2)], -1)
    soft = 4.0 * skew_kl(p_t, p_s, 0.4, reverse)
    bce = F.binary_cross_entropy_with_logits(student, target, reduction="none")
    ref = (0.5 * bce + 0.5 * soft).mean()
    assert_same_values_and_grads(ours, ref, [student], torch.float64)


@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_fp64(reverse):
    student = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(4, 5, dtype=torch.float64)
    target = torch.randint(0, 5, (4,))
    divergence = "skew_reverse_kl" if reverse else "skew_forward_kl"
    assert torch.autograd.gradcheck(
        lambda s: distillation_loss(s, teacher, target, 2.0, 0.7, divergence=divergence, skew=0.3),
        (student,),
    )


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), float("inf")])
def test_a_skew_outside_zero_to_one_is_refused(bad):
    student, target = torch.randn(3, K), torch.randint(0, K, (3,))
    with pytest.raises(ValueError, match=r"skew must be a finite number in \[0, 1\)"):
        distillation_loss(student, student, target, divergence="skew_forward_kl", skew=bad)
    with pytest.raises(ValueError, match=r"skew must be a finite number"):
        Teacher(divergence="skew_reverse_kl", skew=bad)


def test_skew_is_only_read_by_the_skew_divergences():
    student, target = torch.randn(3, K), torch.randint(0, K, (3,))
    with pytest.raises(ValueError, match="skew is only used by divergence='skew_forward_kl'"):
        distillation_loss(student, student, target, divergence="reverse_kl", skew=0.3)
    with pytest.raises(ValueError, match="skew is only used by"):
        Teacher(divergence="jsd", skew=0.3)
    with pytest.raises((TypeError, ValueError), match="skew"):
        LinearSoftTargetLoss(Teacher(divergence="skew_forward_kl", skew="a"))
