"""The linear-head loss equals the loss of the materialized logits hidden @ W.T + b: values
and gradients of hidden, weight and bias against written-out formulas and against
SoftTargetLoss, every source, reduction and dtype; no (N, V) tensor; input checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from loss_reference import TOL, assert_same_values_and_grads
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import softlabel.functional as SF
import softlabel.kernels.fused as fused_kernel
from softlabel import LinearSoftTargetLoss, SoftTargetLoss
from softlabel.kernels import default_linear_chunk_rows
from softlabel.targets import (
    ClassPrior,
    DecoupledTeacher,
    Hard,
    PreviousModel,
    Teacher,
    UniformPrior,
)

IGNORE = -100
EPS, T, KD_ALPHA, RELOOP_ALPHA = 0.1, 2.0, 0.7, 0.4
H, TH, V = 6, 4, 7
JSD_BETA, DKD_ALPHA, DKD_BETA, DKD_CE = 0.3, 1.5, 2.0, 0.5
PRIOR = torch.tensor([0.3, 0.1, 0.2, 0.05, 0.15, 0.1, 0.1])
MATRIX = torch.softmax(torch.randn(V, V, generator=torch.Generator().manual_seed(5)), -1)
NAMES = ["ce", "ls", "ls_prior", "kd", "reloop"]
# the sources of the divergences, DKD and class-conditional smoothing issues
MORE_NAMES = ["kd_reverse", "kd_jsd", "kd_tvd", "kd_std", "dkd", "ls_matrix"]
TEACHER_NAMES = {"kd", "kd_reverse", "kd_jsd", "kd_tvd", "kd_std", "dkd"}
ROOT = Path(__file__).resolve().parents[1]


def source_of(name):
    return {
        "ce": Hard(),
        "ls": UniformPrior(EPS),
        "ls_prior": ClassPrior(EPS, prior=PRIOR),
        "kd": Teacher(T, KD_ALPHA),
        "reloop": PreviousModel(RELOOP_ALPHA),
        "kd_reverse": Teacher(T, KD_ALPHA, divergence="reverse_kl"),
        "kd_jsd": Teacher(T, KD_ALPHA, divergence="jsd", beta=JSD_BETA),
        "kd_tvd": Teacher(T, KD_ALPHA, divergence="tvd"),
        "kd_std": Teacher(T, KD_ALPHA, standardize=True),
        "dkd": DecoupledTeacher(T, DKD_ALPHA, DKD_BETA, DKD_CE),
        "ls_matrix": ClassPrior(EPS, prior=MATRIX),
    }[name]


def make_case(positions=(2, 5), dtype=torch.float64, bias=True, vocab=V, seed=0, size=H):
    """Student and teacher heads, labels (every 3rd ignored) and previous probabilities."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    case = {
        "hidden": randn(*positions, size).requires_grad_(),
        "weight": randn(vocab, size).requires_grad_(),
        "bias": randn(vocab).requires_grad_() if bias else None,
        "teacher_hidden": randn(*positions, TH),
        "teacher_weight": randn(vocab, TH),
        "teacher_bias": randn(vocab) if bias else None,
        "previous": torch.softmax(randn(*positions, vocab), -1),
    }
    target = torch.randint(0, vocab, positions, generator=gen)
    target.view(-1)[::3] = IGNORE
    case["target"] = target
    return case


def grad_inputs(case):
    return [x for x in (case["hidden"], case["weight"], case["bias"]) if x is not None]


def materialized(case):
    """The logits and teacher logits the linear loss never builds."""
    s = F.linear(case["hidden"], case["weight"], case["bias"])
    t = F.linear(case["teacher_hidden"], case["teacher_weight"], case["teacher_bias"])
    return s, t


def reference(name, case, reduction="mean", class_weight=None):
    """Written-out per-position formulas on the materialized logits, then the reduction."""
    s, t = materialized(case)
    y = case["target"]
    mask = y != IGNORE
    y0 = y.masked_fill(~mask, 0)
    log_p = F.log_softmax(s, -1)
    ce = -log_p.gather(-1, y0[..., None])[..., 0]
    if name == "ce":
        per = ce
    elif name == "ls":
        per = (1 - EPS) * ce - EPS * log_p.mean(-1)
    elif name == "ls_prior":
        per = (1 - EPS) * ce - EPS * (log_p * PRIOR.to(s.dtype)).sum(-1)
    elif name == "ls_matrix":  # row y of M is class y's smoothing distribution
        per = (1 - EPS) * ce - EPS * (log_p * MATRIX.to(s.dtype)[y0]).sum(-1)
    elif name == "dkd":
        per = DKD_CE * ce + T * T * _dkd(s, t, y0)
    elif name.startswith("kd"):
        per = (1 - KD_ALPHA) * ce + KD_ALPHA * T * T * _divergence(name, s, t)
    else:
        p_y = log_p.exp().gather(-1, y0[..., None])[..., 0]
        q_y = case["previous"].gather(-1, y0[..., None])[..., 0]
        per = (1 - RELOOP_ALPHA) * ce + RELOOP_ALPHA * torch.relu(q_y - p_y)
    w = mask.to(s.dtype) if class_weight is None else class_weight.to(s.dtype)[y0] * mask
    per = torch.where(mask, per, torch.zeros_like(per)) * w
    if reduction == "none":
        return per
    return per.sum() if reduction == "sum" else per.sum() / w.sum()


def _standardized(x):
    """z-score per position with Bessel's correction (Sun et al., 2024)."""
    return (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-7)


def _kl(log_a, log_b):
    return (log_a.exp() * (log_a - log_b)).sum(-1)


def _divergence(name, s, t):
    """D(p_t^T, p_s^T) per position: forward/reverse KL, generalized JSD, total variation."""
    if name == "kd_std":
        s, t = _standardized(s), _standardized(t)
    log_q, log_r = F.log_softmax(t / T, -1), F.log_softmax(s / T, -1)
    if name == "kd_reverse":
        return _kl(log_r, log_q)
    if name == "kd_tvd":
        return 0.5 * (log_q.exp() - log_r.exp()).abs().sum(-1)
    if name == "kd_jsd":  # M = beta q + (1 - beta) r
        log_m = (JSD_BETA * log_q.exp() + (1 - JSD_BETA) * log_r.exp()).log()
        return JSD_BETA * _kl(log_q, log_m) + (1 - JSD_BETA) * _kl(log_r, log_m)
    return _kl(log_q, log_r)


def _dkd(s, t, y):
    """alpha TCKD + beta NCKD (Zhao et al., 2022): binary KL of the target-class masses and
    the KL of the softmaxes over the non-target classes."""
    onehot = F.one_hot(y, s.shape[-1]).bool()
    p_t, p_s = torch.softmax(t / T, -1), torch.softmax(s / T, -1)
    t_y, s_y = p_t[onehot].view(y.shape), p_s[onehot].view(y.shape)
    tckd = t_y * (t_y / s_y).log() + (1 - t_y) * ((1 - t_y) / (1 - s_y)).log()
    log_q = F.log_softmax((t / T).masked_fill(onehot, float("-inf")), -1)
    log_r = F.log_softmax((s / T).masked_fill(onehot, float("-inf")), -1)
    terms = torch.where(onehot, torch.zeros_like(log_r), log_q.exp() * (log_q - log_r))
    return DKD_ALPHA * tckd + DKD_BETA * terms.sum(-1)


def linear_module(name, case, **options):
    """LinearSoftTargetLoss(source) on the heads."""
    loss = LinearSoftTargetLoss(source_of(name), **options)
    extra = {}
    if name in TEACHER_NAMES:
        extra = {k: case[k] for k in ("teacher_hidden", "teacher_weight", "teacher_bias")}
    if name == "reloop":
        extra = {"previous_probs": case["previous"]}
    return loss(case["hidden"], case["weight"], case["target"], case["bias"], **extra)


def materialized_module(name, case, **options):
    """SoftTargetLoss(source) on the materialized logits (the path the linear loss replaces)."""
    options.pop("chunk_rows", None)
    s, t = materialized(case)
    reference_input = t if name in TEACHER_NAMES else None
    if name == "reloop":
        reference_input = case["previous"]
    return SoftTargetLoss(source_of(name), **options)(s, case["target"], reference_input)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("dtype", "positions", "bias"),
    [(torch.float64, (2, 5), True), (torch.float32, (11,), False)],
    ids=["fp64_3d_bias", "fp32_2d_no_bias"],
)
def test_values_and_gradients_match_reference_and_materialized_path(
    name, reduction, dtype, positions, bias
):
    """N = 10 or 11 rows in chunks of 4 (not a divisor), ignored rows, bias or not."""
    case = make_case(positions, dtype, bias)
    ours = linear_module(name, case, reduction=reduction, chunk_rows=4)
    assert ours.dtype == dtype and ours.shape == (positions if reduction == "none" else ())
    inputs = grad_inputs(case)
    assert_same_values_and_grads(ours, reference(name, case, reduction), inputs, dtype)
    ours = linear_module(name, case, reduction=reduction, chunk_rows=4)
    assert_same_values_and_grads(
        ours, materialized_module(name, case, reduction=reduction), inputs, dtype
    )


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("name", MORE_NAMES)
def test_divergences_dkd_and_prior_matrix_match_reference_and_materialized_path(name, reduction):
    """Every mode the per-chunk math dispatches works through the linear head unchanged."""
    case = make_case((2, 5), torch.float64, True)
    inputs = grad_inputs(case)
    ours = linear_module(name, case, reduction=reduction, chunk_rows=4)
    assert_same_values_and_grads(ours, reference(name, case, reduction), inputs, torch.float64)
    ours = linear_module(name, case, reduction=reduction, chunk_rows=4)
    expected = materialized_module(name, case, reduction=reduction)
    assert_same_values_and_grads(ours, expected, inputs, torch.float64)


@pytest.mark.parametrize("name", ["ls", "ls_matrix", "kd", "kd_jsd", "dkd", "reloop"])
def test_chunk_math_on_cache_sized_sub_chunks(name, monkeypatch):
    """Each chunk of logits is handed to the chunk math in the fused kernel's row count: with
    a tiny budget, chunks of 5 rows run as sub-chunks of 1 or 2 rows."""
    monkeypatch.setitem(fused_kernel.CHUNK_BYTES, "cpu", 256)
    case = make_case((2, 5), torch.float64, True)
    for reduction in ("mean", "none"):
        ours = linear_module(name, case, reduction=reduction, chunk_rows=5)
        expected = reference(name, case, reduction)
        assert_same_values_and_grads(ours, expected, grad_inputs(case), torch.float64)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", ["ce", "kd"])
def test_class_weight_matches_weighted_reference(name, reduction):
    case = make_case()
    class_weight = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5, 0.0, 1.0], dtype=torch.float64)
    ours = linear_module(name, case, reduction=reduction, weight=class_weight, chunk_rows=3)
    expected = reference(name, case, reduction, class_weight)
    assert_same_values_and_grads(ours, expected, grad_inputs(case), torch.float64)


@pytest.mark.parametrize("name", NAMES)
def test_all_rows_ignored_give_zero_and_zero_gradients(name):
    case = make_case()
    case["target"] = torch.full_like(case["target"], IGNORE)
    for reduction in ("mean", "sum", "none"):
        out = linear_module(name, case, reduction=reduction, chunk_rows=3)
        grads = torch.autograd.grad(out.sum(), grad_inputs(case))
        assert torch.count_nonzero(out) == 0
        assert all(torch.count_nonzero(g) == 0 for g in grads)


@pytest.mark.parametrize("name", ["ce", "ls", "kd", "reloop"])  # PRIOR has 7 classes
def test_two_classes(name):
    case = make_case((9,), vocab=2)
    ours = linear_module(name, case, chunk_rows=4)
    expected = materialized_module(name, case)
    assert_same_values_and_grads(ours, expected, grad_inputs(case), torch.float64)


@pytest.mark.parametrize("name", NAMES)
def test_probability_targets_match_materialized_path(name):
    case = make_case((2, 4))
    gen = torch.Generator().manual_seed(3)
    case["target"] = torch.softmax(torch.randn(2, 4, V, generator=gen, dtype=torch.float64), -1)
    for reduction in ("mean", "none"):
        ours = linear_module(name, case, reduction=reduction, chunk_rows=3)
        expected = materialized_module(name, case, reduction=reduction)
        assert_same_values_and_grads(ours, expected, grad_inputs(case), torch.float64)


def test_pure_distillation_without_target():
    case = make_case()
    teacher = {k: case[k] for k in ("teacher_hidden", "teacher_weight", "teacher_bias")}
    ours = SF.linear_distillation_loss(
        case["hidden"], case["weight"], None, case["bias"], alpha=1.0, chunk_rows=4, **teacher
    )
    s, t = materialized(case)
    expected = SF.distillation_loss(s, t, None, 4.0, 1.0)
    assert_same_values_and_grads(ours, expected, grad_inputs(case), torch.float64)


@pytest.mark.parametrize(
    ("name", "reduction"),
    [(name, "mean") for name in [*NAMES, "kd_jsd", "dkd"]] + [("ls", "none"), ("kd", "none")],
)
def test_gradcheck_hidden_weight_bias(name, reduction):
    """fp64 gradcheck of hidden, weight and bias: the full Jacobian for kd (mean, gradients
    from forward) and ls (none, gradients from backward's second pass); random projections
    (fast_mode) for the other modes, whose chunk math the full checks share."""
    case = make_case((4,), seed=1, size=3)
    full = (name, reduction) in (("kd", "mean"), ("ls", "none"))

    def fn(hidden, weight, bias):
        return linear_module(
            name,
            {**case, "hidden": hidden, "weight": weight, "bias": bias},
            reduction=reduction,
            chunk_rows=2,
        )

    assert torch.autograd.gradcheck(
        fn, (case["hidden"], case["weight"], case["bias"]), fast_mode=not full
    )


@pytest.mark.parametrize(("name", "reduction"), [("ls", "none"), ("kd", "mean")])
def test_double_backward_gradgradcheck(name, reduction):
    """create_graph=True recomputes through the materialized formula, as the public losses."""
    case = make_case((3,), seed=2, size=2)

    def fn(hidden, weight, bias):
        return linear_module(
            name,
            {**case, "hidden": hidden, "weight": weight, "bias": bias},
            reduction=reduction,
            chunk_rows=3,
        )

    assert torch.autograd.gradgradcheck(
        fn, (case["hidden"], case["weight"], case["bias"]), fast_mode=True
    )


def test_backward_twice_with_retained_graph_gives_the_same_gradients():
    case = make_case()
    out = linear_module("kd", case, chunk_rows=4)
    first = torch.autograd.grad(out, grad_inputs(case), retain_graph=True)
    second = torch.autograd.grad(out, grad_inputs(case), retain_graph=True)
    out.backward()  # the last backward hands over the stored gradients unscaled
    expected = torch.autograd.grad(materialized_module("kd", case), grad_inputs(case))
    for a, b, c, d in zip(first, second, [x.grad for x in grad_inputs(case)], expected):
        assert torch.equal(a, b) and torch.equal(a, c)
        torch.testing.assert_close(c, d, **TOL[torch.float64])


def test_frozen_head_and_no_grad():
    case = make_case()
    case["weight"].requires_grad_(False)
    case["bias"].requires_grad_(False)
    out = linear_module("ls", case, chunk_rows=4)
    out.backward()
    assert case["weight"].grad is None and case["hidden"].grad is not None
    torch.testing.assert_close(out, reference("ls", case), **TOL[torch.float64])
    with torch.no_grad():
        frozen = linear_module("kd", case, chunk_rows=4)
    assert not frozen.requires_grad
    torch.testing.assert_close(frozen, reference("kd", case).detach(), **TOL[torch.float64])


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["ls", "kd"])
def test_half_inputs_computed_in_float32_with_half_gradients(name, half):
    case = make_case((3, 4), torch.float32)
    for key in ("hidden", "weight", "bias", "teacher_hidden", "teacher_weight", "teacher_bias"):
        case[key] = case[key].detach().to(half).requires_grad_(key in ("hidden", "weight", "bias"))
    ours = linear_module(name, case, chunk_rows=5)
    ours_grads = torch.autograd.grad(ours, grad_inputs(case))
    expected = materialized_module(name, case)  # half logits, float32 math in the kernel
    expected_grads = torch.autograd.grad(expected, grad_inputs(case))
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, expected, rtol=1e-3, atol=1e-3)
    for ours_grad, expected_grad in zip(ours_grads, expected_grads):
        assert ours_grad.dtype == half
        torch.testing.assert_close(ours_grad.float(), expected_grad.float(), rtol=2e-2, atol=2e-2)


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


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("name", ["ls", "kd", "reloop"])
def test_no_tensor_of_the_logits_size_exists(name, reduction):
    """Forward + backward allocate nothing of a quarter of the (N, V) logits' size or more."""
    n, vocab, size = 64, 400, 8  # (N, V) = 25600 values; the weight is (400, 8)
    gen = torch.Generator().manual_seed(0)
    case = {
        "hidden": torch.randn(n, size, generator=gen).requires_grad_(),
        "weight": torch.randn(vocab, size, generator=gen).requires_grad_(),
        "bias": torch.randn(vocab, generator=gen).requires_grad_(),
        "teacher_hidden": torch.randn(n, size, generator=gen),
        "teacher_weight": torch.randn(vocab, size, generator=gen),
        "teacher_bias": None,
        "previous": torch.softmax(torch.randn(n, vocab, generator=gen), -1),
        "target": torch.randint(0, vocab, (n,), generator=gen),
    }
    inputs = {x.untyped_storage().data_ptr() for x in case.values() if x is not None}
    recorder = _StorageRecorder()
    with recorder:
        linear_module(name, case, reduction=reduction, chunk_rows=8).sum().backward()
    full = n * vocab * 4
    made = [size for ptr, size in recorder.storages.items() if ptr not in inputs]
    assert max(made) < full // 4


def _heads(case):
    return case["hidden"], case["weight"], case["target"], case["bias"]


def test_input_checks_name_the_argument():
    case = make_case((4,))
    h, w, y, b = _heads(case)
    with pytest.raises(
        ValueError,
        match=r"weight must have shape \(V, H\).*H = hidden.shape\[-1\] = 6, got \(7, 5\)",
    ):
        SF.linear_cross_entropy_loss(h, w[:, :5], y, b)
    with pytest.raises(ValueError, match=r"weight must have shape \(V, H\) with V >= 2"):
        SF.linear_cross_entropy_loss(h, w[:1], y, None)
    with pytest.raises(ValueError, match=r"bias must have shape \(7,\).*got \(6,\)"):
        SF.linear_cross_entropy_loss(h, w, y, b[:6])
    with pytest.raises(ValueError, match=r"hidden must have shape \(..., H\).*got \(6,\)"):
        SF.linear_cross_entropy_loss(h[0], w, y[0], b)
    with pytest.raises(TypeError, match=r"weight has dtype torch.float32, hidden torch.float64"):
        SF.linear_cross_entropy_loss(h, w.float(), y, b)
    with pytest.raises(ValueError, match=r"hidden @ weight.T must have shape"):
        SF.linear_cross_entropy_loss(h, w, y[:3], b)
    with pytest.raises(ValueError, match=r"class indices in \[0, 7\)"):
        SF.linear_cross_entropy_loss(h, w, torch.full_like(y, 7), b)
    with pytest.raises(ValueError, match=r"chunk_rows must be None or an int >= 1, got 0"):
        SF.linear_cross_entropy_loss(h, w, y, b, chunk_rows=0)
    with pytest.raises(ValueError, match=r"smoothing must be in \[0, 1\)"):
        SF.linear_label_smoothing_loss(h, w, y, b, smoothing=1.5)
    with pytest.raises(ValueError, match=r"prior must be a probability vector of length 7"):
        SF.linear_label_smoothing_loss(h, w, y, b, prior=torch.ones(3) / 3)
    with pytest.raises(ValueError, match=r"previous must have the logits' shape \(4, 7\)"):
        SF.linear_self_correction_loss(h, w, y, b, previous=torch.rand(4, 6))


def test_teacher_head_checks():
    case = make_case((4,))
    h, w, y, b = _heads(case)
    th, tw = case["teacher_hidden"], case["teacher_weight"]
    with pytest.raises(ValueError, match=r"teacher_weight has 6 classes \(rows\), weight has 7"):
        SF.linear_distillation_loss(h, w, y, b, teacher_hidden=th, teacher_weight=tw[:6])
    with pytest.raises(
        ValueError, match=r"teacher_hidden must have the student's positions \(4,\)"
    ):
        SF.linear_distillation_loss(h, w, y, b, teacher_hidden=th[:3], teacher_weight=tw)
    with pytest.raises(
        ValueError, match=r"teacher_weight must have shape \(V, H\).*= 4, got \(7, 3\)"
    ):
        SF.linear_distillation_loss(h, w, y, b, teacher_hidden=th, teacher_weight=tw[:, :3])
    with pytest.raises(ValueError, match=r"teacher_bias must have shape \(7,\)"):
        SF.linear_distillation_loss(
            h, w, y, b, teacher_hidden=th, teacher_weight=tw, teacher_bias=torch.zeros(5)
        )
    with pytest.raises(ValueError, match=r"target=None is only allowed with alpha=1"):
        SF.linear_distillation_loss(h, w, None, b, teacher_hidden=th, teacher_weight=tw)


@pytest.mark.parametrize(
    ("key", "index", "message"),
    [
        (
            "hidden",
            (1, 3, 2),
            r"hidden must be finite \(no NaN or inf\), got nan at position \(1, 3, 2\)",
        ),
        (
            "teacher_hidden",
            (0, 4, 1),
            r"teacher_hidden must be finite.*got inf at position \(0, 4, 1\)",
        ),
        ("weight", (5, 0), r"weight must be finite.*got nan at position \(5, 0\)"),
        ("teacher_bias", (2,), r"teacher_bias must be finite.*got inf at position \(2,\)"),
    ],
)
def test_non_finite_values_are_named_with_their_position(key, index, message):
    case = make_case()
    case["target"] = torch.zeros_like(case["target"])  # every position counts
    value = float("nan") if "nan" in message else float("inf")
    with torch.no_grad():
        case[key][index] = value
    with pytest.raises(ValueError, match=message):
        linear_module("kd", case, chunk_rows=4)


def test_non_finite_hidden_at_an_ignored_position_is_not_an_error():
    case = make_case()
    with torch.no_grad():
        case["hidden"][0, 0, 1] = float("nan")  # position (0, 0) is ignored
    out = linear_module("ls", case, chunk_rows=4)
    grads = torch.autograd.grad(out, grad_inputs(case))
    assert all(bool(torch.isfinite(g).all()) for g in grads)
    assert torch.count_nonzero(grads[0][0, 0]) == 0


def test_overflowing_logits_are_reported():
    case = make_case((3,))
    with torch.no_grad():
        case["hidden"].mul_(1e200)  # finite inputs, logits beyond float64's range
        case["weight"].mul_(1e200)
    with pytest.raises(ValueError, match=r"the loss overflowed at position \(\d+,\)"):
        linear_module("ce", case)


def test_module_checks_source_and_references():
    with pytest.raises(
        TypeError, match=r"source must be a softlabel.targets source with a per-row loss"
    ):
        LinearSoftTargetLoss(object())
    case = make_case((4,))
    h, w, y, b = _heads(case)
    with pytest.raises(ValueError, match=r"Hard takes no teacher head, got teacher_hidden"):
        LinearSoftTargetLoss(Hard())(h, w, y, b, teacher_hidden=case["teacher_hidden"])
    with pytest.raises(ValueError, match=r"Teacher needs the teacher's head"):
        LinearSoftTargetLoss(Teacher())(h, w, y, b)
    with pytest.raises(ValueError, match=r"PreviousModel needs previous_probs"):
        LinearSoftTargetLoss(PreviousModel())(h, w, y, b)
    with pytest.raises(ValueError, match=r"UniformPrior takes no previous_probs"):
        LinearSoftTargetLoss(UniformPrior())(h, w, y, b, previous_probs=case["previous"])
    with pytest.raises(ValueError, match=r"ClassPrior has no prior"):
        LinearSoftTargetLoss(ClassPrior(0.1))(h, w, y, b)


class _FeaturesHead(nn.Module):
    """A model that opts in: model(x) == head(features(x))."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, width), nn.Tanh())
        self.head = nn.Linear(width, V)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.features(x))


def test_forward_model_equals_the_loss_of_the_model_outputs():
    torch.manual_seed(0)
    student, teacher = _FeaturesHead(H).double(), _FeaturesHead(TH).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    y = torch.randint(0, V, (2, 5))
    y[0, 0] = IGNORE
    ours = LinearSoftTargetLoss(Teacher(T, KD_ALPHA), chunk_rows=3).forward_model(
        student, x, y, teacher=teacher
    )
    expected = SoftTargetLoss(Teacher(T, KD_ALPHA))(student(x), y, teacher(x))
    params = list(student.parameters())
    assert_same_values_and_grads(ours, expected, params, torch.float64)
    assert all(p.grad is None for p in teacher.parameters())
    with pytest.raises(TypeError, match=r"model \(Linear\) must expose features\(x\)"):
        LinearSoftTargetLoss().forward_model(nn.Linear(3, V), x, y)


def test_default_chunk_rows_follow_vocabulary_hidden_size_and_device():
    assert default_linear_chunk_rows(32000, 1024) >= 128
    assert default_linear_chunk_rows(128256, 2048) >= 128  # the floor for the matmuls
    assert default_linear_chunk_rows(1000, 64) > default_linear_chunk_rows(32000, 64)
    assert default_linear_chunk_rows(1000, 64) > default_linear_chunk_rows(1000, 65536)
    assert default_linear_chunk_rows(32000, 1024, device="cuda") >= 1024


def test_benchmark_quick_mode_runs():
    """One process, one thread, no memory subprocesses: a smoke test, no timing asserted."""
    script = str(ROOT / "benchmarks" / "linear_loss.py")
    done = subprocess.run(
        [sys.executable, script, "--quick", "--no-memory", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "| variant |" in done.stdout
