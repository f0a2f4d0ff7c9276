"""What the public loss calls cost and accept: no full-size temporaries from input checks,
NaN/inf found on the per-row losses, double backward, probability targets, temperature bound."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from loss_reference import TOL, assert_same_values_and_grads
from torch.utils._python_dispatch import TorchDispatchMode

import softlabel.functional as SF
import softlabel.kernels.fused as fused_kernel
from softlabel import SoftTargetLoss
from softlabel.targets import Hard, PreviousModel, Teacher, UniformPrior

N, K = 64, 50


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


def _public_calls(s, y, t, prev, matrix):
    return {
        "ce": lambda: SF.cross_entropy_loss(s, y),
        "ls": lambda: SF.label_smoothing_loss(s, y, 0.1),
        "ls_prior": lambda: SF.label_smoothing_loss(s, y, 0.1, prior=torch.full((K,), 1.0 / K)),
        "ls_matrix": lambda: SF.label_smoothing_loss(s, y, 0.1, prior=matrix),
        "kd": lambda: SF.distillation_loss(s, t, y, 4.0, 0.9),
        "kd_reverse": lambda: SF.distillation_loss(s, t, y, 4.0, 0.9, divergence="reverse_kl"),
        "kd_jsd": lambda: SF.distillation_loss(s, t, y, 4.0, 0.9, divergence="jsd", beta=0.3),
        "kd_tvd": lambda: SF.distillation_loss(s, t, y, 4.0, 0.9, divergence="tvd"),
        "kd_std": lambda: SF.distillation_loss(s, t, y, 4.0, 0.9, standardize=True),
        "dkd": lambda: SF.decoupled_distillation_loss(s, t, y, 4.0, 1.0, 8.0),
        "relax": lambda: SF.label_relaxation_loss(s, y, 0.1),
        "reloop": lambda: SF.self_correction_loss(s, y, prev, 0.5),
        "module_kd": lambda: SoftTargetLoss(Teacher(4.0, 0.9))(s, y, t),
    }


PUBLIC_CALLS = [
    "ce",
    "ls",
    "ls_prior",
    "ls_matrix",
    "kd",
    "kd_reverse",
    "kd_jsd",
    "kd_tvd",
    "kd_std",
    "dkd",
    "relax",
    "reloop",
    "module_kd",
]


@pytest.mark.parametrize("name", PUBLIC_CALLS)
def test_public_forward_allocates_no_full_size_temporary(name, monkeypatch):
    """Forward + backward of an fp32 public call allocates one (N, K) array: the gradient."""
    monkeypatch.setitem(fused_kernel.CHUNK_BYTES, "cpu", 2 << 10)  # several chunks
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(N, K, generator=gen).requires_grad_()
    t = torch.randn(N, K, generator=gen)
    prev = torch.softmax(torch.randn(N, K, generator=gen), -1)
    y = torch.randint(0, K, (N,), generator=gen)
    y[::7] = -100
    matrix = torch.softmax(torch.randn(K, K, generator=gen), -1)  # (K, K): an input here
    inputs = {x.untyped_storage().data_ptr() for x in (s, t, prev, y, matrix)}
    recorder = _StorageRecorder()
    with recorder:
        loss = _public_calls(s, y, t, prev, matrix)[name]()
        loss.backward()
    full = N * K * 4
    big = [p for p, size in recorder.storages.items() if size >= full // 4 and p not in inputs]
    assert len(big) == 1, f"{name}: {len(big)} storages of >= a quarter of the logits' size"


def test_nan_logit_in_a_counted_row_names_argument_and_position():
    s = torch.randn(2, 3, K)
    s[1, 2, 7] = float("nan")
    with pytest.raises(ValueError, match=r"logits must be finite.*nan at position \(1, 2, 7\)"):
        SF.label_smoothing_loss(s, torch.zeros(2, 3, dtype=torch.long))


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_teacher_logit_is_named(value):
    s, t = torch.randn(4, K), torch.randn(4, K)
    t[2, 3] = value
    with pytest.raises(ValueError, match=r"teacher_logits must be finite.*position \(2, 3\)"):
        SF.distillation_loss(s, t, torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_non_finite_student_logit_is_named_for_kd(value):
    s, t = torch.randn(4, K), torch.randn(4, K)
    s[0, 1] = value
    with pytest.raises(ValueError, match=r"student_logits must be finite.*position \(0, 1\)"):
        SF.distillation_loss(s, t, torch.zeros(4, dtype=torch.long))


def test_non_finite_logits_at_ignored_positions_are_not_read():
    s = torch.randn(3, K, requires_grad=True)
    y = torch.tensor([1, -100, 2])
    with torch.no_grad():
        s[1] = float("nan")
    loss = SF.label_smoothing_loss(s, y, 0.1)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.equal(s.grad[1], torch.zeros(K))


def test_minus_inf_masks_a_non_target_class_as_in_torch():
    s = torch.randn(3, K, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(3, K, dtype=torch.bool)
    mask[:, 0] = True
    y = torch.tensor([1, 2, 3])
    assert_same_values_and_grads(
        SF.cross_entropy_loss(s.masked_fill(mask, float("-inf")), y),
        F.cross_entropy(s.masked_fill(mask, float("-inf")), y),
        [s],
        torch.float64,
    )
    with pytest.raises(ValueError, match=r"logits must be finite.*-inf at position \(0, 0\)"):
        # -inf at the target class
        SF.cross_entropy_loss(s.masked_fill(mask, float("-inf")), torch.tensor([0, 2, 3]))


def test_overflow_with_finite_logits_is_reported_as_such():
    s = torch.full((2, K), 3e38)
    s[:, 0] = 0.0
    with pytest.raises(ValueError, match="overflowed.*finite inputs"):
        SF.label_smoothing_loss(s, torch.tensor([0, 1]), 0.1)


# ------------------------------------------------------------------ double backward
def _mlp_penalty(loss_fn, seed=0):
    """d/dW of ||d loss / d x||^2 + loss for a two-layer MLP (a gradient penalty)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(6, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(7, K, generator=gen, dtype=torch.float64, requires_grad=True)
    logits = torch.tanh(x @ w1) @ w2
    loss = loss_fn(logits)
    (dx,) = torch.autograd.grad(loss, x, create_graph=True)
    total = loss + dx.pow(2).sum()
    return torch.autograd.grad(total, (w1, w2))


def _double_backward_cases():
    gen = torch.Generator().manual_seed(1)
    y = torch.randint(0, K, (8,), generator=gen)
    y[3] = -100
    t = torch.randn(8, K, generator=gen, dtype=torch.float64)
    prev = torch.softmax(torch.randn(8, K, generator=gen, dtype=torch.float64) * 3, -1)
    keep = (y != -100).double()
    y0 = y.clamp_min(0)

    def masked_mean(per):
        return (per * keep).sum() / keep.sum()

    def ce(s):
        return -F.log_softmax(s, -1).gather(1, y0[:, None])[:, 0]

    def kd_ref(s):
        log_q, log_r = F.log_softmax(t / 3.0, -1), F.log_softmax(s / 3.0, -1)
        kl = (log_q.exp() * (log_q - log_r)).sum(-1)
        return masked_mean(0.7 * 9.0 * kl + 0.3 * ce(s))

    def reloop_ref(s):
        p_y = torch.softmax(s, -1).gather(1, y0[:, None])[:, 0]
        prev_y = prev.gather(1, y0[:, None])[:, 0]
        return masked_mean(0.5 * ce(s) + 0.5 * (prev_y - p_y).clamp_min(0))

    return {
        "ce": (lambda s: SF.cross_entropy_loss(s, y), lambda s: F.cross_entropy(s, y)),
        "ls": (
            lambda s: SF.label_smoothing_loss(s, y, 0.2),
            lambda s: F.cross_entropy(s, y, label_smoothing=0.2),
        ),
        "kd": (lambda s: SF.distillation_loss(s, t, y, 3.0, 0.7), kd_ref),
        "reloop": (lambda s: SF.self_correction_loss(s, y, prev, 0.5), reloop_ref),
    }


@pytest.mark.parametrize("name", ["ce", "ls", "kd", "reloop"])
def test_gradient_penalty_matches_the_plain_formula(name):
    ours, reference = _double_backward_cases()[name]
    for got, expected in zip(_mlp_penalty(ours), _mlp_penalty(reference)):
        torch.testing.assert_close(got, expected, **TOL[torch.float64])


def test_double_backward_passes_gradgradcheck():
    s = torch.randn(4, K, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 3, -100, 1])
    t = torch.randn(4, K, dtype=torch.float64)
    assert torch.autograd.gradgradcheck(lambda x: SF.distillation_loss(x, t, y, 2.0, 0.5), (s,))


# ------------------------------------------------------------------ probability targets
def _probs(shape, dtype, one_hot_rows=()):
    gen = torch.Generator().manual_seed(3)
    q = torch.softmax(torch.randn(*shape, K, generator=gen, dtype=dtype) * 2, -1)
    for row in one_hot_rows:
        q.view(-1, K)[row] = F.one_hot(torch.tensor(row % K), K).to(dtype)
    return q


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(6,), (2, 3)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_probability_targets_match_torch_cross_entropy(dtype, shape, reduction, smoothing):
    s = torch.randn(*shape, K, dtype=dtype, requires_grad=True)
    q = _probs(shape, dtype, one_hot_rows=(0,))

    def expected():
        return F.cross_entropy(
            s.movedim(-1, 1), q.movedim(-1, 1), reduction=reduction, label_smoothing=smoothing
        )

    ours = SF.label_smoothing_loss(s, q, smoothing, reduction=reduction)
    assert_same_values_and_grads(ours, expected(), [s], dtype)
    if smoothing == 0.0:
        module = SoftTargetLoss(Hard(), reduction=reduction)
        ours = SF.cross_entropy_loss(s, q, reduction=reduction)
        assert_same_values_and_grads(ours, expected(), [s], dtype)
        assert_same_values_and_grads(module(s, q), expected(), [s], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_probability_targets_with_distillation(dtype, temperature):
    s = torch.randn(2, 3, K, dtype=dtype, requires_grad=True)
    t = torch.randn(2, 3, K, dtype=dtype)
    q = _probs((2, 3), dtype)
    log_qt = F.log_softmax(t / temperature, -1)
    kl = (log_qt.exp() * (log_qt - F.log_softmax(s / temperature, -1))).sum(-1)
    ce = -(q * F.log_softmax(s, -1)).sum(-1)
    expected = (0.6 * temperature**2 * kl + 0.4 * ce).mean()
    ours = SoftTargetLoss(Teacher(temperature, 0.6))(s, q, t)
    assert_same_values_and_grads(ours, expected, [s], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_probability_targets_with_self_correction(dtype):
    s = torch.randn(6, K, dtype=dtype, requires_grad=True)
    prev = _probs((6,), dtype)
    q = _probs((6,), dtype).flip(0)
    p = torch.softmax(s, -1)
    hinge = (q * (prev - p).clamp_min(0)).sum(-1)
    expected = (0.6 * -(q * F.log_softmax(s, -1)).sum(-1) + 0.4 * hinge).mean()
    ours = SoftTargetLoss(PreviousModel(0.4))(s, q, prev)
    assert_same_values_and_grads(ours, expected, [s], dtype)
    # one-hot probability targets give the class-index loss
    y = torch.randint(0, K, (6,))
    one_hot = F.one_hot(y, K).to(dtype)
    torch.testing.assert_close(
        SF.self_correction_loss(s, one_hot, prev, 0.4),
        SF.self_correction_loss(s, y, prev, 0.4),
        **TOL[dtype],
    )


def test_one_hot_float_target_is_class_probabilities_not_multilabel():
    """Regression: a (N, K) one-hot float target was read as K independent binary labels."""
    s = torch.randn(4, K, dtype=torch.float64)
    y = torch.tensor([0, 2, 4, 1])
    one_hot = F.one_hot(y, K).double()
    torch.testing.assert_close(SF.cross_entropy_loss(s, one_hot), F.cross_entropy(s, y))
    multilabel = F.binary_cross_entropy_with_logits(s, one_hot)
    torch.testing.assert_close(SF.cross_entropy_loss(s, one_hot, binary=True), multilabel)


@pytest.mark.parametrize(
    ("target", "pattern"),
    [
        (torch.full((3, K), 0.5), r"class probabilities.*sum 25"),
        (torch.tensor([[1.5, -0.5] + [0.0] * (K - 2)] * 3), r"class probabilities.*minimum -0\.5"),
        (torch.full((3, K), float("nan")), r"class probabilities"),
    ],
)
def test_bad_probability_targets_are_refused(target, pattern):
    with pytest.raises(ValueError, match=pattern):
        SF.label_smoothing_loss(torch.randn(3, K, requires_grad=True), target, 0.1)


def test_integer_target_of_the_logits_shape_is_refused_with_the_choices():
    with pytest.raises(TypeError, match="class probabilities.*binary=True"):
        SF.cross_entropy_loss(torch.randn(3, K), torch.zeros(3, K, dtype=torch.long))


def test_weight_with_probability_targets_is_refused():
    with pytest.raises(ValueError, match="weight.*probability targets"):
        SF.cross_entropy_loss(torch.randn(3, K), _probs((3,), torch.float32), weight=torch.ones(K))


def test_sources_accept_probability_targets():
    s = torch.randn(3, K, requires_grad=True)
    q = _probs((3,), torch.float32)
    for source in (Hard(), UniformPrior(0.1)):
        SoftTargetLoss(source)(s, q).backward()
    assert torch.isfinite(s.grad).all()


# ------------------------------------------------------------------ temperature
def test_large_temperature_within_the_bound_stays_finite():
    s, t = torch.randn(4, K), torch.randn(4, K)
    loss = SF.distillation_loss(s, t, torch.zeros(4, dtype=torch.long), temperature=1000.0)
    assert torch.isfinite(loss)
