"""One rule for teacher logits, whatever reads them: finite at the positions that count.

KD refused a -inf teacher logit (every divergence but TVD) and DKD too, while TVD and DIST
accepted it; now every source refuses NaN and +-inf dense teacher logits at the positions
that count, on logits and through the linear head, and ignores them elsewhere. A top-k
reference holds log-probabilities, where -inf is probability 0 (an empty tail): accepted,
except by the divergences that are infinite there.
"""

from __future__ import annotations

import pytest
import torch

from softlabel import LinearSoftTargetLoss, SoftTargetLoss
from softlabel.targets import DIST, DecoupledTeacher, Teacher, TopKLogits

K = 6
DENSE_SOURCES = {
    **{
        divergence: Teacher(2.0, 0.5, divergence=divergence)
        for divergence in (
            "forward_kl",
            "reverse_kl",
            "jsd",
            "tvd",
            "skew_forward_kl",
            "skew_reverse_kl",
        )
    },
    "kd_std": Teacher(2.0, 0.5, standardize=True),
    "dkd": DecoupledTeacher(),
    "dist": DIST(),
}


def _case(bad: float):
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(4, K, generator=gen, requires_grad=True)
    teacher = torch.randn(4, K, generator=gen)
    target = torch.tensor([0, 1, -100, 3])
    teacher[1, 2] = bad  # a position that counts
    return student, teacher, target


@pytest.mark.parametrize("bad", [float("-inf"), float("inf"), float("nan")])
@pytest.mark.parametrize("name", sorted(DENSE_SOURCES))
def test_non_finite_teacher_logits_are_refused_by_every_source(name, bad):
    student, teacher, target = _case(bad)
    with pytest.raises(ValueError, match=r"teacher_logits must be finite.*position \(1, 2\)"):
        SoftTargetLoss(DENSE_SOURCES[name])(student, target, teacher)


@pytest.mark.parametrize("name", sorted(set(DENSE_SOURCES) - {"dist"}))
def test_the_linear_head_refuses_them_too(name):
    student, teacher, target = _case(float("-inf"))
    hidden = torch.randn(4, 3, requires_grad=True)
    weight = torch.randn(K, 3, requires_grad=True)
    with pytest.raises(ValueError, match=r"teacher_logits must be finite.*position \(1, 2\)"):
        LinearSoftTargetLoss(DENSE_SOURCES[name])(hidden, weight, target, teacher_logits=teacher)


@pytest.mark.parametrize("name", sorted(DENSE_SOURCES))
def test_ignored_positions_are_not_read(name):
    student, teacher, target = _case(0.0)
    teacher[2] = float("nan")  # target[2] is ignore_index
    teacher[2, 0] = float("-inf")
    loss = SoftTargetLoss(DENSE_SOURCES[name])(student, target, teacher)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()


def test_a_topk_tail_of_minus_infinity_is_probability_zero():
    student, teacher, target = _case(0.0)
    teacher[:, 3:] = float("-inf")  # three ids hold all the mass
    reference = TopKLogits.from_logits(teacher, 3)
    assert torch.isneginf(reference.tail).all()
    for divergence in ("forward_kl", "tvd", "jsd", "skew_reverse_kl"):
        loss = SoftTargetLoss(Teacher(2.0, 0.5, divergence=divergence))(student, target, reference)
        assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="'reverse_kl' is infinite"):
        SoftTargetLoss(Teacher(2.0, 0.5, divergence="reverse_kl"))(student, target, reference)
