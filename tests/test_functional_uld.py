"""Universal Logit Distillation (Boizard et al., 2024) against its formula written out here:
(1 - alpha) CE + alpha sum_i |sort(p_s)_i - sort(p_t)_i|, each vocabulary its own size; the
top-k bucket form; the hybrid (GOLD) form on two toy vocabularies; both modules; refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from loss_reference import assert_same_values_and_grads

from softlabel import LinearSoftTargetLoss, SoftTargetLoss
from softlabel.functional import uld_loss
from softlabel.targets import TopKLogits, UniversalLogitDistillation


def sorted_l1(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Sort each decreasingly, pad the shorter with zeros, sum |difference| (row by row)."""
    rows = []
    for a, b in zip(p, q):
        a = torch.sort(a, descending=True).values
        b = torch.sort(b, descending=True).values
        width = max(len(a), len(b))
        a = torch.cat([a, a.new_zeros(width - len(a))])
        b = torch.cat([b, b.new_zeros(width - len(b))])
        rows.append((a - b).abs().sum())
    return torch.stack(rows)


def reference(student, teacher, target, temperature, alpha, reduction="mean"):
    flat_s = student.reshape(-1, student.shape[-1])
    flat_t = teacher.reshape(-1, teacher.shape[-1])
    soft = sorted_l1(F.softmax(flat_s / temperature, -1), F.softmax(flat_t / temperature, -1))
    mask = (target != -100).reshape(-1)
    ce = F.cross_entropy(flat_s, target.reshape(-1).masked_fill(~mask, 0), reduction="none")
    per = (((1 - alpha) * ce + alpha * soft) * mask).view(target.shape)
    if reduction == "none":
        return per
    return per.sum() / mask.sum() if reduction == "mean" else per.sum()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("teacher_vocab", [5, 9, 14])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_the_formula_for_any_teacher_vocabulary(dtype, teacher_vocab, reduction):
    student = (torch.randn(2, 4, 9, dtype=dtype) * 2).requires_grad_()
    teacher = torch.randn(2, 4, teacher_vocab, dtype=dtype) * 2
    target = torch.randint(0, 9, (2, 4))
    target[1, 2] = -100
    ours = uld_loss(student, target, teacher, temperature=1.5, alpha=0.4, reduction=reduction)
    ref = reference(student, teacher, target, 1.5, 0.4, reduction)
    assert_same_values_and_grads(ours, ref, [student], dtype)


def test_no_temperature_squared_and_pure_distillation_without_target():
    student = torch.randn(6, 7, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(6, 11, dtype=torch.float64)
    ours = uld_loss(student, None, teacher, temperature=4.0, alpha=1.0)
    ref = sorted_l1(F.softmax(student / 4, -1), F.softmax(teacher / 4, -1)).mean()
    assert_same_values_and_grads(ours, ref, [student], torch.float64)
    assert float(ours.detach()) <= 2.0


@pytest.mark.parametrize("student_vocab", [8, 3])  # more and fewer ids than k = 4 buckets
def test_topk_reference_on_k_plus_one_buckets(student_vocab):
    student = (torch.randn(5, student_vocab, dtype=torch.float64) * 2).requires_grad_()
    teacher = torch.randn(5, 20, dtype=torch.float64) * 2  # the teacher's own vocabulary
    reference_topk = TopKLogits.from_logits(teacher, 4)
    target = torch.randint(0, student_vocab, (5,))
    ours = uld_loss(student, target, reference_topk, temperature=1.0, alpha=0.5)
    p = torch.sort(F.softmax(student, -1), -1, descending=True).values
    p = F.pad(p, (0, max(0, 5 - student_vocab)))  # zeros up to the k + 1 buckets
    q = torch.sort(F.softmax(teacher, -1), -1, descending=True).values
    soft = (p[:, :4] - q[:, :4]).abs().sum(-1) + (p[:, 4:].sum(-1) - q[:, 4:].sum(-1)).abs()
    ref = (0.5 * F.cross_entropy(student, target, reduction="none") + 0.5 * soft).mean()
    assert_same_values_and_grads(ours, ref, [student], torch.float64)


def test_hybrid_on_two_toy_vocabularies():
    """Student ids 0..4 ("a" "b" "c" "d" "e"), teacher ids 0..5 ("x" "b" "a" "y" "c" "z"):
    "a", "b", "c" match as (0, 2), (1, 1), (2, 4)."""
    matched = torch.tensor([[0, 2], [1, 1], [2, 4]])
    source = UniversalLogitDistillation(1.0, 0.3, hybrid=True, matched_weight=0.7)
    source.set_vocabulary_map(matched)
    student = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(4, 6, dtype=torch.float64)
    target = torch.randint(0, 5, (4,))
    ours = SoftTargetLoss(source)(student, target, teacher)
    p, q = F.softmax(student, -1), F.softmax(teacher, -1)
    p_b = torch.stack([p[:, 0], p[:, 1], p[:, 2], p[:, 3] + p[:, 4]], -1)
    q_b = torch.stack([q[:, 2], q[:, 1], q[:, 4], q[:, 0] + q[:, 3] + q[:, 5]], -1)
    kl = (q_b * (q_b.log() - p_b.log())).sum(-1)
    rest = sorted_l1(p[:, [3, 4]], q[:, [0, 3, 5]])
    soft = 0.7 * kl + (1 - 0.7) * rest  # unmatched_weight None: 1 - matched_weight
    ref = (0.7 * F.cross_entropy(student, target, reduction="none") + 0.3 * soft).mean()
    assert_same_values_and_grads(ours, ref, [student], torch.float64)
    gold = UniversalLogitDistillation(1.0, 1.0, hybrid=True)
    gold.set_vocabulary_map(matched)
    value = gold.loss(student, target, teacher)
    weight = 3 / 6  # GOLD's default: matched tokens over the teacher's vocabulary
    torch.testing.assert_close(value, (weight * kl + (1 - weight) * rest).mean())


def test_linear_head_with_a_teacher_of_another_vocabulary():
    hidden = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    t_hidden = torch.randn(3, 4, 5, dtype=torch.float64)
    t_weight = torch.randn(13, 5, dtype=torch.float64)
    target = torch.randint(0, 9, (3, 4))
    target[0, 0] = -100
    source = UniversalLogitDistillation(2.0, 0.6)
    head = LinearSoftTargetLoss(source, chunk_rows=5)
    live = head(hidden, weight, target, teacher_hidden=t_hidden, teacher_weight=t_weight)
    cached = head(hidden, weight, target, teacher_logits=t_hidden @ t_weight.T)
    for ours in (live, cached):
        ref = reference(hidden @ weight.T, t_hidden @ t_weight.T, target, 2.0, 0.6)
        assert_same_values_and_grads(ours, ref, [hidden, weight], torch.float64)


def test_refusals_name_what_is_wrong():
    student, target = torch.randn(4, 6), torch.randint(0, 6, (4,))
    with pytest.raises(
        ValueError, match=r"teacher_logits must have the student's positions \(4,\)"
    ):
        uld_loss(student, target, torch.randn(5, 6))
    with pytest.raises(ValueError, match="no vocabulary map: call set_vocabulary_map"):
        UniversalLogitDistillation(hybrid=True).loss(student, target, torch.randn(4, 8))
    hybrid = UniversalLogitDistillation(hybrid=True)
    hybrid.set_vocabulary_map([[0, 1], [1, 9]])
    with pytest.raises(ValueError, match="teacher id 9, but the teacher's vocabulary has 8"):
        hybrid.loss(student, target, torch.randn(4, 8))
    with pytest.raises(ValueError, match="maps student id 0 more than once"):
        hybrid.set_vocabulary_map([[0, 1], [0, 2]])
    with pytest.raises(ValueError, match="only used with hybrid=True"):
        UniversalLogitDistillation(matched_weight=0.5)
    reference_topk = TopKLogits.from_logits(torch.randn(4, 8), 3)
    with pytest.raises(ValueError, match="needs the teacher's logits over every class"):
        SoftTargetLoss(hybrid)(student, target, reference_topk)
