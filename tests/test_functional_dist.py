"""dist_loss / DIST against the paper's formula written out (Pearson correlations per sample
over classes and per class over the batch)."""

import pytest
import torch
import torch.nn.functional as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from loss_reference import SHAPES, TOL, K, assert_same_values_and_grads, weighted_reduce

from softlabel import SoftTargetLoss
from softlabel.functional import dist_loss
from softlabel.targets import DIST

EPS = 1e-8


def _pearson(a, b, eps=EPS):
    """rho(a, b) = sum (a - mean a)(b - mean b) / (||a - mean a|| ||b - mean b|| + eps)."""
    da, db = a - a.mean(), b - b.mean()
    return (da * db).sum() / (torch.sqrt((da * da).sum()) * torch.sqrt((db * db).sum()) + eps)


def _reference(student, teacher, target, temperature, alpha, beta, gamma, reduction, weight):
    """Huang et al. (2022), written out over the positions that count, one row at a time."""
    k = student.shape[-1]
    s, t = student.reshape(-1, k), teacher.reshape(-1, k)
    flat = target.reshape(-1) if target is not None else torch.zeros(s.shape[0], dtype=torch.long)
    mask = flat != -100
    rows = [i for i in range(s.shape[0]) if mask[i]]
    p = torch.softmax(s[rows] / temperature, -1)
    q = torch.softmax(t[rows] / temperature, -1)
    inter = [1 - _pearson(p[j], q[j]) for j in range(len(rows))]
    intra = 1 - torch.stack([_pearson(p[:, c], q[:, c]) for c in range(k)]).mean()
    soft = torch.zeros(s.shape[0], dtype=s.dtype)
    for j, i in enumerate(rows):
        soft = soft + tf.one_hot(torch.tensor(i), s.shape[0]).to(s.dtype) * (
            alpha * temperature**2 * (beta * inter[j] + gamma * intra)
        )
    safe = torch.where(mask, flat, torch.zeros_like(flat))
    per = soft
    if alpha < 1:
        ce = tf.cross_entropy(s, safe, reduction="none")
        per = per + (1 - alpha) * torch.where(mask, ce, torch.zeros_like(ce))
    sample_weight = mask.to(s.dtype)
    if weight is not None:
        sample_weight = sample_weight * weight[safe]
    shape = target.shape if target is not None else student.shape[:-1]
    return weighted_reduce(per.view(shape), sample_weight.view(shape), reduction)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(("weighted", "temperature"), [(False, 1.0), (True, 4.0)])
def test_matches_written_out_formula(dtype, shape, reduction, weighted, temperature):
    student = (torch.randn(*shape, K, dtype=dtype) * 2).requires_grad_()
    teacher = torch.randn(*shape, K, dtype=dtype) * 2
    target = torch.randint(0, K, shape)
    target.view(-1)[::4] = -100
    weight = torch.rand(K, dtype=dtype) + 0.1 if weighted else None
    ours = dist_loss(
        student, teacher, target, temperature, 0.6, 1.0, 2.0, reduction=reduction, weight=weight
    )
    reference = _reference(student, teacher, target, temperature, 0.6, 1.0, 2.0, reduction, weight)
    assert_same_values_and_grads(ours, reference, [student], dtype)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_pure_dist_without_target(reduction):
    student = torch.randn(2, 4, K, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 4, K, dtype=torch.float64)
    ours = dist_loss(student, teacher, None, 2.0, 1.0, 1.0, 1.0, reduction=reduction)
    reference = _reference(student, teacher, None, 2.0, 1.0, 1.0, 1.0, reduction, None)
    assert_same_values_and_grads(ours, reference, [student], torch.float64)


def test_correlations_are_pearsons():
    """With a negligible eps the terms are torch.corrcoef's correlations."""
    student = torch.randn(7, K, dtype=torch.float64)
    teacher = torch.randn(7, K, dtype=torch.float64)
    p, q = torch.softmax(student, -1), torch.softmax(teacher, -1)
    inter = torch.stack([torch.corrcoef(torch.stack([p[i], q[i]]))[0, 1] for i in range(7)])
    intra = torch.stack([torch.corrcoef(torch.stack([p[:, c], q[:, c]]))[0, 1] for c in range(K)])
    expected = (1 - inter.mean()) + 3 * (1 - intra.mean())
    ours = dist_loss(student, teacher, None, 1.0, 1.0, 1.0, 3.0, eps=1e-300)
    torch.testing.assert_close(ours, expected, **TOL[torch.float64])


def test_ignored_rows_are_left_out_of_both_terms():
    """Ignored positions count in neither term (the batch term is over counted rows only):
    the loss equals the loss on the counted rows alone, and ignored rows may hold NaN."""
    student = torch.randn(6, K, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(6, K, dtype=torch.float64)
    target = torch.tensor([1, -100, 0, 4, -100, 2])
    keep = target != -100
    padded = torch.where(keep.unsqueeze(1), student, torch.full_like(student, float("nan")))
    ours = dist_loss(padded, teacher, target, 2.0, 0.3, 1.0, 1.0)
    subset = dist_loss(student[keep], teacher[keep], target[keep], 2.0, 0.3, 1.0, 1.0)
    torch.testing.assert_close(ours, subset, **TOL[torch.float64])
    none = dist_loss(student, teacher, target, 2.0, 0.3, reduction="none")
    assert none[~keep].eq(0).all() and none[keep].gt(0).all()
    everything = dist_loss(student, teacher, torch.full((6,), -100))
    assert everything.item() == 0.0 and everything.grad_fn is not None


def test_three_dimensional_is_the_flattened_batch_and_sum_is_n_times_mean():
    student = torch.randn(2, 3, K, dtype=torch.float64)
    teacher = torch.randn(2, 3, K, dtype=torch.float64)
    target = torch.randint(0, K, (2, 3))
    ours = dist_loss(student, teacher, target, 4.0, 0.5, reduction="sum")
    flat = dist_loss(student.reshape(6, K), teacher.reshape(6, K), target.reshape(6), 4.0, 0.5)
    torch.testing.assert_close(ours, 6 * flat, **TOL[torch.float64])
    none = dist_loss(student, teacher, target, 4.0, 0.5, reduction="none")
    assert none.shape == (2, 3)
    torch.testing.assert_close(none.sum(), ours, **TOL[torch.float64])


def test_source_needs_teacher_and_equals_functional():
    source = DIST(temperature=4.0, alpha=0.5, beta=2.0, gamma=2.0)
    assert source.name == "dist" and source.reference == "teacher_logits"
    student = torch.randn(5, K, requires_grad=True)
    teacher = torch.randn(5, K)
    target = torch.randint(0, K, (5,))
    criterion = SoftTargetLoss(source)
    torch.testing.assert_close(
        criterion(student, target, teacher), dist_loss(student, teacher, target, 4.0, 0.5, 2, 2)
    )
    with pytest.raises(ValueError, match="teacher_logits"):
        criterion(student, target)
    with pytest.raises(ValueError, match="binary"):
        SoftTargetLoss(source, binary=True)(
            student[:, 0], target.float().clamp(0, 1), teacher[:, 0]
        )


def test_paper_weights_are_alpha_half_times_two():
    """The paper's CE + beta inter + gamma intra is alpha = 0.5, times 2."""
    student = torch.randn(8, K, dtype=torch.float64)
    teacher = torch.randn(8, K, dtype=torch.float64)
    target = torch.randint(0, K, (8,))
    ce = tf.cross_entropy(student, target)
    soft = dist_loss(student, teacher, None, 1.0, 1.0, 1.0, 1.0)
    torch.testing.assert_close(
        2 * dist_loss(student, teacher, target, 1.0, 0.5, 1.0, 1.0), ce + soft, **TOL[torch.float64]
    )


def test_gradcheck():
    student = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 3, 4, dtype=torch.float64)
    target = torch.tensor([[0, 3, -100], [2, 1, 1]])
    weight = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: dist_loss(x, teacher, target, 2.0, 0.5, 1.0, 2.0, weight=weight), (student,)
    )


def test_bad_input_is_refused():
    student, teacher = torch.randn(3, K), torch.randn(3, K)
    target = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="beta must be a finite number >= 0, got -1"):
        dist_loss(student, teacher, target, beta=-1.0)
    with pytest.raises(ValueError, match="gamma"):
        DIST(gamma=float("inf"))
    with pytest.raises(ValueError, match="eps must be a finite number > 0, got 0"):
        dist_loss(student, teacher, target, eps=0.0)
    with pytest.raises(ValueError, match="alpha=1"):
        dist_loss(student, teacher, None, alpha=0.5)
    with pytest.raises(ValueError, match="teacher_logits must have the student's shape"):
        dist_loss(student, teacher[:2], target)
    nan_teacher = teacher.clone()
    nan_teacher[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"teacher_logits must be finite.*\(1, 2\)"):
        dist_loss(student, nan_teacher, target)


@settings(max_examples=15, deadline=None)
@given(
    k=st.integers(2, 7),
    n=st.integers(2, 9),
    temperature=st.floats(0.5, 8.0),
    seed=st.integers(0, 2**16),
)
def test_property_bounded_and_zero_at_the_teacher(k, n, temperature, seed):
    """Each term is 1 - a correlation, in [0, 2]; both vanish when the student's probabilities
    are the teacher's (with a negligible eps: the default 1e-8 is not negligible against
    the variance of nearly uniform rows)."""
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(n, k, generator=generator, dtype=torch.float64) * 3
    teacher = torch.randn(n, k, generator=generator, dtype=torch.float64) * 3
    scale = temperature**2
    inter = dist_loss(student, teacher, None, temperature, 1.0, 1.0, 0.0) / scale
    intra = dist_loss(student, teacher, None, temperature, 1.0, 0.0, 1.0) / scale
    assert -1e-9 <= inter.item() <= 2 + 1e-9 and -1e-9 <= intra.item() <= 2 + 1e-9
    same = dist_loss(teacher + 1.5, teacher, None, temperature, 1.0, 1.0, 1.0, eps=1e-300)
    same = same / scale
    assert abs(same.item()) < 1e-6
