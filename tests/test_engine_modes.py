"""Every engine mode against its own differentiable formula, on every path it runs on.

For each mode of ``softlabel.kernels.modes.MODES`` (and each teacher reference kind it reads:
dense logits, a live linear head, a top-k reference) the engine's chunked forward and its
gradient written in forward are compared with the mode's ``reference`` formula (the one the
double backward differentiates): on logit rows and on a linear head's rows, in fp32 and fp64,
with ignored rows, chunks of several sizes, and reductions and 3-D positions through the
public modules. The formulas themselves are checked against the papers' written out in the
``test_functional_*`` files.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from softlabel import LinearSoftTargetLoss, SoftTargetLoss
from softlabel.kernels import TopKLogits
from softlabel.kernels.engine import head_loss, logits_per_row, reference_per_row
from softlabel.kernels.modes import MODES
from softlabel.kernels.references import LinearHead
from softlabel.kernels.spec import LossSpec
from softlabel.targets import (
    ClassPrior,
    ConfidenceSmoothing,
    DecoupledTeacher,
    Hard,
    LabelRelaxation,
    MarginSmoothing,
    PreviousModel,
    Teacher,
    UniformPrior,
    UniversalLogitDistillation,
    VirtualTeacher,
)

N, K, H = 23, 9, 5
TOL = {torch.float32: dict(rtol=2e-5, atol=2e-5), torch.float64: dict(rtol=1e-9, atol=1e-10)}
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "tvd", "skew_forward_kl", "skew_reverse_kl")


def _cases():
    """(id, mode, params, reference kind) for every mode and setting worth a case."""
    yield "hard", "hard", {}, None
    yield "ls", "ls", {"eps": 0.2}, None
    yield "ls_prior", "ls", {"eps": 0.3}, "prior"
    yield "ls_matrix", "ls", {"eps": 0.3}, "matrix"
    for divergence in DIVERGENCES:
        params = {"temperature": 2.5, "alpha": 0.6, "divergence": divergence}
        yield f"kd_{divergence}", "kd", params, "logits"
        yield f"kd_{divergence}_topk", "kd", params, "topk"
        yield f"kd_{divergence}_pure", "kd", {**params, "alpha": 1.0}, "logits"
    yield "kd_jsd_beta", "kd", {"divergence": "jsd", "beta": 0.3, "temperature": 1.0}, "logits"
    yield "kd_skew_03", "kd", {"divergence": "skew_reverse_kl", "skew": 0.3}, "topk"
    yield "kd_std", "kd", {"standardize": True, "temperature": 2.0, "alpha": 0.5}, "logits"
    yield "kd_std_jsd", "kd", {"standardize": True, "divergence": "jsd"}, "logits"
    yield "dkd", "dkd", {"temperature": 3.0, "ce_weight": 0.5}, "logits"
    yield "relax", "relax", {"alpha": 0.3}, None
    yield "reloop", "reloop", {"alpha": 0.4}, "previous"
    yield "margin", "margin", {"margin": 1.0, "penalty": 0.3}, None
    yield "confidence", "confidence", {"margin": 0.1, "power": 1.5}, None
    yield "virtual_teacher", "virtual_teacher", {"correct_prob": 0.7, "temperature": 3.0}, None
    yield "uld", "uld", {"temperature": 1.5, "alpha": 0.4}, "logits"
    yield "uld_topk", "uld", {"temperature": 1.0, "alpha": 0.6}, "topk"
    yield "uld_pure", "uld", {"alpha": 1.0}, "logits"


CASES = {case[0]: case[1:] for case in _cases()}


def test_every_mode_has_a_case():
    assert {mode for mode, _, _ in CASES.values()} == set(MODES)


def _inputs(mode: str, kind: str | None, dtype: torch.dtype, seed: int = 0):
    """Logits (N, K) (scale 3), labels with ignored rows, and the spec's tensors."""
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(N, K, generator=gen, dtype=torch.float64) * 3).to(dtype)
    labels = torch.randint(0, K, (N,), generator=gen)
    valid = torch.rand(N, generator=gen) > 0.25
    tensors: dict = {}
    teacher = (torch.randn(N, K, generator=gen, dtype=torch.float64) * 3).to(dtype)
    if kind == "logits":
        tensors["teacher"] = teacher
    elif kind == "topk":
        tensors["teacher"] = TopKLogits.from_logits(teacher, 3)
    elif kind == "prior":
        tensors["prior"] = torch.softmax(torch.randn(K, generator=gen, dtype=dtype), 0)
    elif kind == "matrix":
        tensors["prior"] = torch.softmax(torch.randn(K, K, generator=gen, dtype=dtype), 1)
    elif kind == "previous":
        tensors["previous"] = torch.softmax(
            torch.randn(N, K, generator=gen, dtype=torch.float64).to(dtype) * 3, 1
        )
    return logits, labels, valid, tensors


def _spec(mode: str, params: dict, tensors: dict, chunk_rows=None) -> LossSpec:
    return LossSpec(mode, MODES[mode].settings(params), chunk_rows=chunk_rows, **tensors)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk_rows", [None, 4])
@pytest.mark.parametrize("case", sorted(CASES))
def test_logit_rows_match_the_mode_formula(case, chunk_rows, dtype):
    mode, params, kind = CASES[case]
    logits, labels, valid, tensors = _inputs(mode, kind, dtype)
    spec = _spec(mode, params, tensors, chunk_rows)
    weights = torch.rand(N, dtype=torch.float64)
    s = logits.clone().requires_grad_()
    ours = logits_per_row(s, labels, valid, spec)
    (grad,) = torch.autograd.grad((ours.double() * weights).sum(), s)
    s64 = logits.double().requires_grad_()
    spec64 = _spec(mode, params, {k: _double(v) for k, v in tensors.items()}, chunk_rows)
    ref = reference_per_row(s64, labels, valid, spec64)
    (ref_grad,) = torch.autograd.grad((ref * weights).sum(), s64)
    torch.testing.assert_close(ours.double(), ref, **TOL[dtype])
    torch.testing.assert_close(grad.double(), ref_grad, **TOL[dtype])
    assert grad.dtype == dtype
    assert torch.equal(ours[~valid], torch.zeros_like(ours[~valid]))
    assert torch.equal(grad[~valid], torch.zeros_like(grad[~valid]))


def _double(value):
    if isinstance(value, TopKLogits):
        return value.to(dtype=torch.float64)
    return value.double() if torch.is_tensor(value) and value.is_floating_point() else value


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", sorted(CASES))
def test_linear_head_rows_match_the_mode_formula(case, dtype):
    """The same through the linear head (the logits never built): gradients of hidden, weight
    and bias; a live teacher head where the mode reads dense logits."""
    mode, params, kind = CASES[case]
    _, labels, valid, tensors = _inputs(mode, kind, dtype)
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(N, H, generator=gen, dtype=torch.float64).to(dtype)
    weight = torch.randn(K, H, generator=gen, dtype=torch.float64).to(dtype)
    bias = torch.randn(K, generator=gen, dtype=torch.float64).to(dtype)
    if kind == "logits":
        t_hidden = torch.randn(N, 4, generator=gen, dtype=torch.float64).to(dtype)
        t_weight = torch.randn(K, 4, generator=gen, dtype=torch.float64).to(dtype)
        tensors["teacher"] = LinearHead(t_hidden, t_weight * 2)
    row_weight = torch.rand(N, dtype=torch.float64).to(dtype)
    spec = _spec(mode, params, tensors, chunk_rows=5)
    inputs = [x.clone().requires_grad_() for x in (hidden, weight, bias)]
    total, per_row = head_loss(LinearHead(*inputs), labels, valid, spec, row_weight)
    grads = torch.autograd.grad(total, inputs)
    ref_inputs = [x.double().requires_grad_() for x in (hidden, weight, bias)]
    ref_tensors = dict(tensors)
    if kind == "logits":
        ref_tensors["teacher"] = tensors["teacher"].logits().double()
    else:
        ref_tensors = {k: _double(v) for k, v in tensors.items()}
    ref_spec = _spec(mode, params, ref_tensors)
    ref_rows = reference_per_row(F.linear(*ref_inputs), labels, valid, ref_spec)
    ref_total = (ref_rows * row_weight.double()).sum()
    ref_grads = torch.autograd.grad(ref_total, ref_inputs)
    torch.testing.assert_close(per_row.double(), ref_rows.detach(), **TOL[dtype])
    torch.testing.assert_close(total.double(), ref_total.detach(), **TOL[dtype])
    for ours, ref in zip(grads, ref_grads):
        torch.testing.assert_close(ours.double(), ref, **TOL[dtype])


@pytest.mark.parametrize("case", ["hard", "ls_matrix", "kd_jsd_topk", "dkd", "margin", "reloop"])
def test_double_backward_differentiates_the_formula(case):
    """create_graph=True: a gradient penalty through the fused loss is that of the formula."""
    mode, params, kind = CASES[case]
    logits, labels, valid, tensors = _inputs(mode, kind, torch.float64)
    spec = _spec(mode, params, tensors)
    s = logits.clone().requires_grad_()
    (grad,) = torch.autograd.grad(
        logits_per_row(s, labels, valid, spec).sum(), s, create_graph=True
    )
    (second,) = torch.autograd.grad(grad.square().sum(), s)
    s_ref = logits.clone().requires_grad_()
    (ref_grad,) = torch.autograd.grad(
        reference_per_row(s_ref, labels, valid, spec).sum(), s_ref, create_graph=True
    )
    (ref_second,) = torch.autograd.grad(ref_grad.square().sum(), s_ref)
    torch.testing.assert_close(second, ref_second, rtol=1e-9, atol=1e-10)


# Every source with an engine mode, with the reference it reads: the public modules add the
# reductions, class weights and 3-D positions around the engine.
SOURCES = {
    "hard": (Hard(), None),
    "ls": (UniformPrior(0.2), None),
    "ls_prior": (ClassPrior(0.2, prior=[0.1, 0.2, 0.05, 0.15, 0.1, 0.1, 0.1, 0.1, 0.1]), None),
    "kd": (Teacher(2.0, 0.7), "teacher"),
    "kd_skew": (Teacher(2.0, 0.7, divergence="skew_forward_kl", skew=0.2), "teacher"),
    "kd_skew_topk": (Teacher(1.5, 0.7, divergence="skew_reverse_kl"), "topk"),
    "dkd": (DecoupledTeacher(3.0), "teacher"),
    "relax": (LabelRelaxation(0.2), None),
    "reloop": (PreviousModel(0.3), "previous"),
    "margin": (MarginSmoothing(1.0, 0.2), None),
    "confidence": (ConfidenceSmoothing(), None),
    "tf_kd": (VirtualTeacher(0.8, 4.0, 0.5), None),
    "uld": (UniversalLogitDistillation(1.5, 0.5), "teacher"),
    "uld_topk": (UniversalLogitDistillation(1.0, 0.5), "topk"),
}


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", sorted(SOURCES))
def test_sources_through_both_modules_on_three_dimensional_positions(name, reduction):
    """(B, T, V) logits and the (B, T, H) hidden states of a head give one loss, with
    ignored positions and class weights, whichever module computes it."""
    source, kind = SOURCES[name]
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(2, 6, H, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(K, H, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, K, (2, 6), generator=gen)
    target[0, :2] = -100
    class_weight = torch.rand(K, generator=gen, dtype=torch.float64) + 0.5
    teacher = torch.randn(2, 6, K, generator=gen, dtype=torch.float64) * 2
    reference = {
        None: None,
        "teacher": teacher,
        "topk": TopKLogits.from_logits(teacher, 4),
        "previous": torch.softmax(teacher, -1),
    }[kind]
    plain = SoftTargetLoss(source, reduction=reduction, weight=class_weight)
    linear = LinearSoftTargetLoss(source, reduction=reduction, weight=class_weight, chunk_rows=5)
    logits = F.linear(hidden, weight)
    expected = plain(logits, target, reference)
    extra = {}
    if kind in ("teacher", "topk"):
        extra["teacher_logits"] = reference
    elif kind == "previous":
        extra["previous_probs"] = reference
    ours = linear(hidden, weight, target, **extra)
    cotangent = torch.rand_like(expected)
    ref_grads = torch.autograd.grad(expected, (hidden, weight), cotangent)
    grads = torch.autograd.grad(ours, (hidden, weight), cotangent)
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-10)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
