"""A sparse top-k teacher (and dense teacher logits) through the fused linear head.

``LinearSoftTargetLoss(source)(hidden, weight, target, bias, teacher_logits=...)`` must equal
the materialized path, ``SoftTargetLoss(source)(F.linear(hidden, weight, bias), target,
teacher_logits)``, in value and in the gradients of hidden, weight and bias, for every
divergence, with the tail bucket of ``topk_distillation_loss``, ignored positions,
reductions, class weights and (..., H) hidden states; without ever making a tensor of the
student's logits' size; and bad references are refused naming what is wrong.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from softlabel import LinearSoftTargetLoss, SoftTargetLoss
from softlabel.functional import linear_distillation_loss
from softlabel.targets import Teacher, TopKLogits

V, H = 11, 6
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "tvd", "skew_forward_kl", "skew_reverse_kl")


def make(shape=(3, 5), k=4, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*shape, H, generator=gen, dtype=dtype, requires_grad=True)
    weight = (torch.randn(V, H, generator=gen, dtype=dtype)).requires_grad_()
    bias = torch.randn(V, generator=gen, dtype=dtype, requires_grad=True)
    target = torch.randint(0, V, shape, generator=gen)
    target.view(-1)[::3] = -100
    teacher = torch.randn(*shape, V, generator=gen, dtype=dtype) * 3
    return hidden, weight, bias, target, teacher, TopKLogits.from_logits(teacher, k)


def both(source, reduction, weight_classes, hidden, weight, bias, target, reference):
    """(linear-head loss, materialized loss) and their gradients w.r.t. hidden, weight, bias."""
    kw = {"reduction": reduction, "weight": weight_classes}
    ours = LinearSoftTargetLoss(source, chunk_rows=4, **kw)(
        hidden, weight, target, bias, teacher_logits=reference
    )
    plain = SoftTargetLoss(source, **kw)(F.linear(hidden, weight, bias), target, reference)
    cotangent = torch.rand_like(plain)
    grads = torch.autograd.grad(ours, (hidden, weight, bias), cotangent)
    ref_grads = torch.autograd.grad(plain, (hidden, weight, bias), cotangent)
    return ours, plain, grads, ref_grads


def assert_close(ours, plain, grads, ref_grads, dtype=torch.float64):
    tol = {"rtol": 1e-9, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(ours, plain, **tol)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.5), (2.0, 0.9), (3.0, 1.0)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_topk_reference_equals_the_materialized_path(divergence, temperature, alpha, reduction):
    hidden, weight, bias, target, _, reference = make()
    if alpha == 1.0:
        target = None
    source = Teacher(temperature, alpha, divergence=divergence)
    assert_close(*both(source, reduction, None, hidden, weight, bias, target, reference))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("divergence", ["forward_kl", "jsd"])
def test_class_weights_and_both_dtypes(dtype, divergence):
    hidden, weight, bias, target, _, reference = make(dtype=dtype, seed=1)
    classes = torch.rand(V, dtype=dtype) + 0.5
    source = Teacher(2.0, 0.7, divergence=divergence)
    assert_close(*both(source, "mean", classes, hidden, weight, bias, target, reference), dtype)


def test_dense_teacher_logits_equal_the_materialized_path():
    hidden, weight, bias, target, teacher, _ = make(seed=2)
    for source in (Teacher(2.0, 0.7), Teacher(2.0, 0.7, divergence="tvd", standardize=True)):
        assert_close(*both(source, "mean", None, hidden, weight, bias, target, teacher))


def test_a_zero_tail_is_exact():
    """When the k kept ids hold every bit of the teacher's mass the tail is -inf: the bucket
    counts as 0 log 0 = 0 in value and gradient, as in ``topk_distillation_loss``."""
    hidden, weight, bias, target, teacher, _ = make(seed=3)
    teacher = teacher.clone()
    teacher[..., 4:] = float("-inf")
    reference = TopKLogits.from_logits(teacher, 4)
    assert torch.isneginf(reference.tail).all()
    for divergence in ("forward_kl", "jsd", "tvd", "skew_forward_kl", "skew_reverse_kl"):
        result = both(
            Teacher(2.0, 0.5, divergence=divergence),
            "mean",
            None,
            hidden,
            weight,
            bias,
            target,
            reference,
        )
        assert torch.isfinite(result[0])
        assert_close(*result)


def test_gradcheck_fp64():
    hidden, weight, bias, target, _, reference = make((4,), k=3, seed=4)
    for divergence in ("forward_kl", "skew_reverse_kl"):

        def loss(h, w, b, divergence=divergence):
            return linear_distillation_loss(
                h,
                w,
                target,
                b,
                teacher_logits=reference,
                temperature=2.0,
                alpha=0.6,
                divergence=divergence,
                chunk_rows=3,
            )

        assert torch.autograd.gradcheck(loss, (hidden, weight, bias))


class _StorageRecorder(TorchDispatchMode):
    """Every distinct storage an op returns, by size in bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.storages: dict[int, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(value, torch.Tensor) and value.device.type != "meta":
                storage = value.untyped_storage()
                self.storages[storage.data_ptr()] = storage.nbytes()
        return out


def test_no_tensor_of_the_logits_size_exists():
    """Forward + backward of KD from a top-k reference through the linear head allocate
    nothing of a quarter of the student's (N, V) logits or more."""
    n, vocab, size = 64, 400, 8
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, size, generator=gen).requires_grad_()
    weight = torch.randn(vocab, size, generator=gen).requires_grad_()
    target = torch.randint(0, vocab, (n,), generator=gen)
    reference = TopKLogits.from_logits(torch.randn(n, vocab, generator=gen) * 3, 8)
    inputs = {x.untyped_storage().data_ptr() for x in (hidden, weight, target, *reference)}
    recorder = _StorageRecorder()
    with recorder:
        loss = LinearSoftTargetLoss(Teacher(2.0, 0.5), chunk_rows=8)
        loss(hidden, weight, target, teacher_logits=reference).backward()
    made = [nbytes for ptr, nbytes in recorder.storages.items() if ptr not in inputs]
    assert max(made) < n * vocab * 4 // 4


def _swap(reference, **fields):
    return reference._replace(**fields)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: _swap(r, index=r.index.clone().fill_(V)), r"class ids in \[0, 11\), got 11"),
        (
            lambda r: _swap(r, index=torch.cat([r.index[..., :1], r.index[..., :-1]], -1)),
            "k distinct ids per position, got a repeated id",
        ),
        (  # a certain teacher rounded above 1: within the mass tolerance, but log p > 0
            lambda r: _swap(
                r,
                logprob=torch.full_like(r.logprob, -30.0).index_fill_(-1, torch.tensor([0]), 0.005),
                tail=torch.full_like(r.tail, -30.0),
            ),
            r"must be a log-probability \(<= 0\), got 0.005",
        ),
        (
            lambda r: _swap(r, logprob=r.logprob - 0.5),
            r"sum\(exp\(logprob\)\) \+ exp\(tail\) must be 1",
        ),
        (lambda r: _swap(r, tail=r.tail[..., :-1]), r"reference.tail must have shape"),
    ],
)
def test_bad_references_are_refused(change, message):
    hidden, weight, bias, target, _, reference = make()
    with pytest.raises(ValueError, match=message):
        LinearSoftTargetLoss(Teacher())(
            hidden, weight, target, bias, teacher_logits=change(reference)
        )


def test_a_teacher_of_another_vocabulary_is_refused():
    hidden, weight, bias, target, teacher, _ = make()
    with pytest.raises(
        ValueError, match=r"teacher_logits must score the student's vocabulary.*11.*12"
    ):
        LinearSoftTargetLoss(Teacher())(
            hidden, weight, target, bias, teacher_logits=torch.randn(3, 5, V + 1)
        )
    with pytest.raises(ValueError, match="not both"):
        LinearSoftTargetLoss(Teacher())(
            hidden,
            weight,
            target,
            bias,
            teacher_logits=teacher,
            teacher_hidden=hidden.detach(),
            teacher_weight=weight.detach(),
        )


def test_bfloat16_heads_compute_in_float32():
    """bf16 hidden states and head: the chunk's logits in bf16 (as F.linear), the math in
    float32, the loss float32 and the gradients bf16, close to the materialized path."""
    hidden, weight, bias, target, _, reference = make(dtype=torch.float32, seed=5)
    args = [x.detach().bfloat16().requires_grad_() for x in (hidden, weight, bias)]
    ours = LinearSoftTargetLoss(Teacher(2.0, 0.7), chunk_rows=4)(
        args[0], args[1], target, args[2], teacher_logits=reference
    )
    assert ours.dtype == torch.float32
    grads = torch.autograd.grad(ours, args)
    assert all(g.dtype == torch.bfloat16 for g in grads)
    plain = SoftTargetLoss(Teacher(2.0, 0.7))(F.linear(*args), target, reference)
    ref_grads = torch.autograd.grad(plain, args)
    torch.testing.assert_close(ours, plain, rtol=2e-2, atol=2e-2)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a.float(), b.float(), rtol=5e-2, atol=5e-2)
