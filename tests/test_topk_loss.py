"""topk_distillation_loss against an explicit coarsening written out here (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from softlabel import SoftTargetLoss
from softlabel.cache import reconstruct_topk_logits
from softlabel.functional import topk_distillation_loss
from softlabel.targets import DIST, DecoupledTeacher, Hard, Teacher, TopKLogits

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "tvd")


def make(shape, k, dtype=torch.float64, seed=0, scale=3.0):
    """Student logits, dense teacher logits of ``shape`` (..., V) and the teacher's exact
    top-k reference (computed here with a sort, independently of TopKLogits.from_logits)."""
    g = torch.Generator().manual_seed(seed)
    student = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).to(dtype)
    teacher = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    logp = torch.log_softmax(teacher, -1)
    order = logp.argsort(-1, descending=True)
    index = order[..., :k]
    rest = logp.gather(-1, order[..., k:]).exp().sum(-1).log()
    reference = TopKLogits(index, logp.gather(-1, index).to(dtype), rest.to(dtype))
    return student.requires_grad_(), teacher, reference


def coarsen(probs, index):
    """[p at the k ids, sum of p over the other ids] with an explicit mask."""
    keep = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, index, True)
    rest = torch.where(keep, torch.zeros_like(probs), probs).sum(-1, keepdim=True)
    return torch.cat([probs.gather(-1, index), rest], -1)


def soften(probs, temperature):
    powered = probs ** (1.0 / temperature)
    return powered / powered.sum(-1, keepdim=True)


def divergence_of(q, p, divergence, beta):
    if divergence == "forward_kl":
        return torch.xlogy(q, q).sum(-1) - (q * p.log()).sum(-1)
    if divergence == "reverse_kl":
        return (p * (p.log() - q.log())).sum(-1)
    if divergence == "tvd":
        return 0.5 * (q - p).abs().sum(-1)
    m = beta * q + (1 - beta) * p
    return beta * (torch.xlogy(q, q) - q * m.log()).sum(-1) + (1 - beta) * (
        p * (p.log() - m.log())
    ).sum(-1)


def reference_loss(
    logits,
    reference,
    target,
    temperature,
    alpha,
    divergence="forward_kl",
    beta=0.5,
    ignore_index=-100,
    reduction="mean",
    weight=None,
):
    """float64: explicit buckets, p^(1/T) softening, full-vocabulary CE, batchmean."""
    s = logits.double()
    probs = torch.softmax(s, -1)
    student = soften(coarsen(probs, reference.index), temperature)
    teacher = torch.cat(
        [reference.logprob.double().exp(), reference.tail.double().exp()[..., None]], -1
    )
    teacher = soften(teacher / teacher.sum(-1, keepdim=True), temperature)
    per = temperature**2 * divergence_of(teacher, student, divergence, beta)
    if target is None:
        mask = torch.ones(per.shape, dtype=torch.bool)
    else:
        mask = target != ignore_index
        safe = torch.where(mask, target, 0)
        hard = -torch.log_softmax(s, -1).gather(-1, safe[..., None])[..., 0]
        per = (1 - alpha) * hard + alpha * per
    w = mask.double() if weight is None else torch.where(mask, weight.double()[safe], 0.0)
    per = torch.where(mask, per, 0.0) * w
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    return per.sum() / w.sum()


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("shape", [(12, 30), (2, 5, 40)])
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_values_and_gradients_match_the_explicit_coarsening(divergence, shape, dtype, tolerance):
    logits, _, reference = make(shape, k=4, dtype=dtype)
    target = torch.randint(0, shape[-1], shape[:-1], generator=torch.Generator().manual_seed(3))
    target.view(-1)[::5] = -100
    beta = 0.3 if divergence == "jsd" else 0.5
    got = topk_distillation_loss(
        logits, reference, target, 2.5, 0.7, divergence=divergence, beta=beta
    )
    (grad,) = torch.autograd.grad(got, logits)
    expected = reference_loss(logits, reference, target, 2.5, 0.7, divergence, beta)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), expected, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(grad, expected_grad, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_every_reduction_with_ignore_index_and_class_weights(reduction):
    logits, _, reference = make((3, 4, 20), k=3)
    target = torch.tensor([[1, -1, 5, 19], [0, 0, -1, 7], [-1, -1, -1, -1]])
    weight = torch.linspace(0.5, 2.0, 20, dtype=torch.float64)
    for w in (None, weight):
        got = topk_distillation_loss(
            logits, reference, target, 3.0, 0.6, ignore_index=-1, reduction=reduction, weight=w
        )
        expected = reference_loss(
            logits, reference, target, 3.0, 0.6, ignore_index=-1, reduction=reduction, weight=w
        )
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    if reduction == "none":
        assert got.shape == (3, 4) and (got[2] == 0).all()


def test_pure_distillation_without_target_counts_every_position():
    logits, _, reference = make((6, 15), k=2)
    got = topk_distillation_loss(logits, reference, None, 4.0, 1.0)
    torch.testing.assert_close(got, reference_loss(logits, reference, None, 4.0, 1.0))


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_gradcheck_in_float64(divergence):
    logits, _, reference = make((2, 3, 7), k=3)
    target = torch.tensor([[0, 6, -100], [4, 4, 1]])
    beta = 0.25 if divergence == "jsd" else 0.5

    def loss(x):
        return topk_distillation_loss(
            x, reference, target, 2.0, 0.5, divergence=divergence, beta=beta
        )

    assert torch.autograd.gradcheck(loss, (logits,), fast_mode=True)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_forward_kl_at_t1_is_the_kl_of_the_coarsened_distributions(k):
    """Exact at T = 1 against the dense teacher, and at most the full KL (data processing)."""
    logits, teacher, _ = make((8, 12), k=k, seed=k)
    reference = TopKLogits.from_logits(teacher, k)
    got = topk_distillation_loss(logits, reference, None, 1.0, 1.0, reduction="none")
    q = coarsen(torch.softmax(teacher, -1), reference.index)
    p = coarsen(torch.softmax(logits.detach(), -1), reference.index)
    torch.testing.assert_close(got.detach(), (q * (q / p).log()).sum(-1), rtol=1e-12, atol=1e-14)
    full_q, full_p = torch.softmax(teacher, -1), torch.softmax(logits.detach(), -1)
    assert (got.detach() <= (full_q * (full_q / full_p).log()).sum(-1) + 1e-12).all()


def bucket_tail_share(logits, reference, temperature):
    """The teacher's softened tail share the loss pulls towards, read off the loss itself:
    d(T^2 KL)/d(student tail bucket logit) = T (p_rest^T - q_rest^T), and the gradients of
    the V - k tail logits sum to that."""
    logits = logits.detach().requires_grad_()
    loss = topk_distillation_loss(logits, reference, None, temperature, 1.0, reduction="sum")
    (grad,) = torch.autograd.grad(loss, logits)
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, reference.index, True)
    grad_rest = torch.where(keep, 0.0, grad).sum(-1)
    student = soften(coarsen(torch.softmax(logits.detach(), -1), reference.index), temperature)
    return student[..., -1] - grad_rest / temperature


def test_tail_bucket_is_a_lower_bound_and_the_uniform_tail_an_upper_bound_at_t4():
    """sum_tail p^(1/T) >= R^(1/T) (subadditivity) and <= (V-k)^(1-1/T) R^(1/T) (power mean)."""
    temperature, k = 4.0, 3
    logits, teacher, reference = make((10, 25), k=k, seed=7)
    bucket = bucket_tail_share(logits, reference, temperature)
    softened = torch.softmax(teacher / temperature, -1)
    keep = torch.zeros_like(softened, dtype=torch.bool).scatter(-1, reference.index, True)
    true_tail = torch.where(keep, 0.0, softened).sum(-1)
    rebuilt = reconstruct_topk_logits(reference.index, reference.logprob, 25, reference.tail)
    uniform_tail = torch.where(keep, 0.0, torch.softmax(rebuilt.double() / temperature, -1)).sum(-1)
    teacher_buckets = torch.cat([reference.logprob, reference.tail[:, None]], -1)
    expected_bucket = torch.softmax(teacher_buckets / temperature, -1)[:, -1]
    torch.testing.assert_close(bucket, expected_bucket, rtol=1e-10, atol=1e-12)
    assert (bucket < true_tail).all() and (true_tail < uniform_tail - 1e-6).all()
    at_one = bucket_tail_share(logits, reference, 1.0)  # T = 1: the tail mass itself
    torch.testing.assert_close(at_one, reference.tail.exp(), rtol=1e-10, atol=1e-12)


def zero_tail_reference(k=3, vocab=10):
    g = torch.Generator().manual_seed(5)
    index = torch.stack([torch.randperm(vocab, generator=g)[:k] for _ in range(4)])
    logprob = torch.log_softmax(torch.randn(4, k, generator=g, dtype=torch.float64), -1)
    logprob[0, 1] = -math.inf  # a kept id of probability 0 too
    logprob[0] = torch.log_softmax(logprob[0], -1)
    tail = torch.full((4,), -math.inf, dtype=torch.float64)
    tail[3] = math.log(0.2)
    logprob[3] = logprob[3] + math.log(0.8)
    return TopKLogits(index, logprob, tail)


@pytest.mark.parametrize("divergence", ["forward_kl", "jsd", "tvd"])
def test_a_zero_tail_gives_finite_values_and_gradients(divergence):
    reference = zero_tail_reference()
    logits = torch.randn(4, 10, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 3, 9, 2])
    got = topk_distillation_loss(logits, reference, target, 2.0, 0.5, divergence=divergence)
    (grad,) = torch.autograd.grad(got, logits)
    expected = reference_loss(logits, reference, target, 2.0, 0.5, divergence)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    assert torch.isfinite(got) and torch.isfinite(grad).all()
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(grad, expected_grad)
    assert torch.autograd.gradcheck(
        lambda x: topk_distillation_loss(x, reference, target, 2.0, 0.5, divergence=divergence),
        (logits,),
        fast_mode=True,
    )


def test_reverse_kl_refuses_a_zero_probability_bucket():
    reference = zero_tail_reference()
    logits = torch.randn(4, 10, dtype=torch.float64)
    for divergence, beta in (("reverse_kl", 0.5), ("jsd", 1.0)):
        with pytest.raises(ValueError, match=r"'reverse_kl' is infinite at position \(0,\)"):
            topk_distillation_loss(
                logits, reference, None, 2.0, 1.0, divergence=divergence, beta=beta
            )
    ignored = torch.tensor([-100, -100, -100, 1])  # the zero tails sit at ignored positions
    partial = TopKLogits(reference.index, reference.logprob, reference.tail.clone())
    partial.tail[3] = math.log(0.2)
    assert torch.isfinite(
        topk_distillation_loss(logits, partial, ignored, 2.0, 0.5, divergence="reverse_kl")
    )


def test_ignored_positions_may_hold_padding_without_nan_gradients():
    logits, _, reference = make((2, 4, 12), k=2)
    target = torch.tensor([[1, 2, -100, -100], [3, -100, 4, 5]])
    padded = TopKLogits(reference.index, reference.logprob.clone(), reference.tail.clone())
    padded.logprob[target == -100] = float("nan")
    padded.tail[target == -100] = 0.0
    got = topk_distillation_loss(logits, padded, target, 2.0, 0.5)
    (grad,) = torch.autograd.grad(got, logits)
    torch.testing.assert_close(got, reference_loss(logits, reference, target, 2.0, 0.5))
    assert torch.isfinite(grad).all()


def test_from_logits_matches_an_explicit_sort_and_keeps_tiny_tails():
    teacher = torch.tensor([[30.0, 0.0, -1.0, 0.5, -2.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    reference = TopKLogits.from_logits(teacher, 2)
    logp = torch.log_softmax(teacher.double(), -1)
    assert reference.index.tolist() == [[0, 3], [4, 3]]
    torch.testing.assert_close(reference.logprob.double(), logp.gather(-1, reference.index))
    rest = [[1, 2, 4], [0, 1, 2]]
    exact = torch.stack([logp[i, r].exp().sum().log() for i, r in enumerate(rest)])
    torch.testing.assert_close(reference.tail.double(), exact, rtol=1e-6, atol=0)
    assert reference.tail[0] < -29  # 1 - sum(p) would be 0 in float32
    assert (1 - reference.logprob[0].exp().sum()) <= 0


def test_sequence_slicing_and_moving():
    _, teacher, _ = make((2, 6, 20), k=3)
    reference = TopKLogits.from_logits(teacher, 3)
    shifted = TopKLogits(*(t[:, :-1] for t in reference))
    assert shifted.index.shape == (2, 5, 3) and shifted.tail.shape == (2, 5)
    moved = reference.to("cpu", dtype=torch.float32)
    assert moved.index.dtype == torch.int64 and moved.logprob.dtype == torch.float32
    with pytest.raises(TypeError, match="floating dtype"):
        reference.to(dtype=torch.int32)
    logits = torch.randn(2, 5, 20, dtype=torch.float64)
    loss = topk_distillation_loss(logits, shifted, None, 2.0, 1.0, reduction="none")
    assert loss.shape == (2, 5)


def test_teacher_source_and_module_dispatch_to_the_topk_loss():
    logits, _, reference = make((2, 3, 16), k=4)
    target = torch.tensor([[1, 2, -100], [0, 15, 7]])
    for divergence in DIVERGENCES:
        source = Teacher(temperature=3.0, alpha=0.8, divergence=divergence)
        got = SoftTargetLoss(source)(logits, target, reference)
        expected = topk_distillation_loss(
            logits, reference, target, 3.0, 0.8, divergence=divergence
        )
        torch.testing.assert_close(got, expected)


def test_sources_that_need_every_logit_refuse_a_topk_reference():
    logits, _, reference = make((4, 10), k=3)
    target = torch.tensor([1, 2, 3, 4])
    with pytest.raises(ValueError, match="standardize=True needs the teacher's logits over every"):
        Teacher(standardize=True).loss(logits, target, reference)
    for source in (DecoupledTeacher(), DIST()):
        with pytest.raises(
            ValueError,
            match=rf"{type(source).__name__} needs the teacher's logits over every class.*teacher.tail=uniform",
        ):
            SoftTargetLoss(source)(logits, target, reference)
        with pytest.raises(
            TypeError, match="teacher_logits must be a torch.Tensor, got TopKLogits"
        ):
            source.loss(logits, target, reference)
    with pytest.raises(ValueError, match="Hard takes no reference, got a top-k TopKLogits"):
        SoftTargetLoss(Hard())(logits, target, reference)


def swap(reference, **fields):
    return reference._replace(**fields)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (
            lambda r: swap(r, index=r.index.clone().index_fill_(-1, torch.tensor([0]), 10)),
            ValueError,
            r"class ids in \[0, 10\), got 10 at position \(0, 0\)",
        ),
        (
            lambda r: swap(r, index=r.index.clone().index_fill_(-1, torch.tensor([1]), -1)),
            ValueError,
            r"class ids in \[0, 10\), got -1 at position \(0, 1\)",
        ),
        (
            lambda r: swap(r, index=torch.zeros(4, 10, dtype=torch.long)),
            ValueError,
            r"k=10 ids per position; k must be in \[1, V - 1\] = \[1, 9\]",
        ),
        (
            lambda r: swap(r, index=r.index[:3]),
            ValueError,
            r"reference.index must have shape \(\*logits.shape\[:-1\], k\) = \(4, 'k'\), got \(3, 3\)",
        ),
        (
            lambda r: swap(r, logprob=r.logprob[:, :2]),
            ValueError,
            r"reference.logprob must have reference.index's shape \(4, 3\), got \(4, 2\)",
        ),
        (
            lambda r: swap(r, tail=r.tail[:, None]),
            ValueError,
            r"reference.tail must have shape logits.shape\[:-1\] = \(4,\), got \(4, 1\)",
        ),
        (
            lambda r: swap(r, index=r.index.double()),
            TypeError,
            "reference.index must hold integer class ids, got torch.float64",
        ),
        (
            lambda r: swap(r, logprob=r.logprob.long()),
            TypeError,
            "reference.logprob must have a floating dtype",
        ),
        (
            lambda r: swap(r, tail=r.tail.long()),
            TypeError,
            "reference.tail must have a floating dtype",
        ),
        (
            lambda r: swap(r, index=torch.cat([r.index[:, :1], r.index[:, :2]], -1)),
            ValueError,
            r"k distinct ids per position, got a repeated id at position \(0,\)",
        ),
        (
            lambda r: swap(r, logprob=r.logprob + 0.5),
            ValueError,
            r"sum\(exp\(logprob\)\) \+ exp\(tail\) must be 1 .* at position \(0,\)",
        ),
        (
            lambda r: swap(r, tail=torch.full_like(r.tail, float("nan"))),
            ValueError,
            r"reference.tail must be a log-probability, got NaN at position \(0,\)",
        ),
        (lambda r: tuple(r), TypeError, "reference must be a softlabel.targets.TopKLogits"),
        (
            lambda r: swap(r, tail=r.tail.tolist()),
            TypeError,
            "reference.tail must be a torch.Tensor, got list",
        ),
    ],
)
def test_bad_references_are_refused_with_clear_errors(change, error, message):
    logits, _, reference = make((4, 10), k=3)
    with pytest.raises(error, match=message):
        topk_distillation_loss(logits, change(reference), None, 2.0, 1.0)


def test_bad_options_are_refused():
    logits, _, reference = make((4, 10), k=3)
    target = torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match="target=None is only allowed with alpha=1"):
        topk_distillation_loss(logits, reference, None, 2.0, 0.5)
    with pytest.raises(ValueError, match="beta is only used by divergence='jsd'"):
        topk_distillation_loss(logits, reference, target, beta=0.2)
    with pytest.raises(ValueError, match="divergence must be one of"):
        topk_distillation_loss(logits, reference, target, divergence="kl")
    with pytest.raises(ValueError, match=r"logits must be \(..., V\) with V >= 2"):
        topk_distillation_loss(logits[0], reference, None, alpha=1.0)
    with pytest.raises(ValueError, match=r"target must hold class indices in \[0, 10\)"):
        topk_distillation_loss(logits, reference, torch.tensor([0, 1, 2, 10]))
    with pytest.raises(ValueError, match="the logits' shape|must be finite"):
        bad = logits.detach().clone()
        bad[2, 5] = float("nan")
        topk_distillation_loss(bad, reference, target)
