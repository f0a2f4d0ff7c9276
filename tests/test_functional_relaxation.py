"""label_relaxation_loss (Lienen and Huellermeier, AAAI 2021) against the relaxed target p_r
built explicitly and KL(p_r || p), with p_r held constant."""

import pytest
import torch
import torch.nn.functional as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from loss_reference import SHAPES, K, assert_same_values_and_grads, weighted_reduce

from softlabel import SoftTargetLoss
from softlabel.functional import cross_entropy_loss, label_relaxation_loss
from softlabel.kernels import fused_soft_target_loss
from softlabel.targets import LabelRelaxation


def _per_position(logits, target, alpha):
    """0 where p_y >= 1 - alpha; else KL(p_r || p), p_r_y = 1 - alpha, p_r_k = alpha p_k /
    sum_{j != y} p_j, p_r detached (no gradient)."""
    p = torch.softmax(logits, -1)
    is_y = tf.one_hot(target, logits.shape[-1]).bool()
    p_y = (p * is_y).sum(-1, keepdim=True)
    rest = torch.where(is_y, 0.0, p).sum(-1, keepdim=True)
    p_r = torch.where(is_y, 1 - alpha, alpha * p / rest).detach()
    kl = (p_r * (torch.log(p_r) - torch.log_softmax(logits, -1))).sum(-1)
    return torch.where(p_y[..., 0] >= 1 - alpha, 0.0, kl)


def _reference(logits, target, alpha, reduction, weight=None):
    mask = target != -100
    safe = torch.where(mask, target, torch.zeros_like(target))
    sample_weight = mask.to(logits.dtype)
    if weight is not None:
        sample_weight = sample_weight * weight[safe]
    return weighted_reduce(_per_position(logits, safe, alpha), sample_weight, reduction)


def _inputs(shape, dtype, seed=0, scale=3.0, k=K):
    """Logits whose rows are partly confident (p_y >= 1 - alpha) and partly not."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, k, generator=gen, dtype=torch.float64) * scale
    target = logits.argmax(-1)
    target.view(-1)[1::2] = torch.randint(0, k, target.view(-1)[1::2].shape, generator=gen)
    target.view(-1)[::3] = -100
    return logits.to(dtype).requires_grad_(), target


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(("alpha", "weighted"), [(0.1, False), (0.3, True)])
def test_matches_kl_to_the_relaxed_target(dtype, shape, reduction, alpha, weighted):
    logits, target = _inputs(shape, dtype)
    weight = torch.rand(K, dtype=dtype) + 0.1 if weighted else None
    ours = label_relaxation_loss(logits, target, alpha, reduction=reduction, weight=weight)
    reference = _reference(logits, target, alpha, reduction, weight)
    assert_same_values_and_grads(ours, reference, [logits], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_over_several_chunks_with_confident_and_unsure_rows(dtype):
    logits, target = _inputs((29,), dtype, seed=1)
    per_row = _per_position(logits.detach().double(), target.clamp_min(0), 0.2)
    assert (per_row == 0).any() and (per_row > 0).any()  # both regimes are exercised
    ours = fused_soft_target_loss(logits, target, mode="relax", alpha=0.2, chunk_rows=4)
    reference = _reference(logits, target, 0.2, "none")
    assert_same_values_and_grads(ours, reference, [logits], dtype)


def test_alpha_zero_is_cross_entropy_and_one_is_zero():
    logits, target = _inputs((2, 3), torch.float64, scale=1.0)
    torch.testing.assert_close(
        label_relaxation_loss(logits, target, 0.0), cross_entropy_loss(logits, target)
    )
    assert label_relaxation_loss(logits, target, 1.0) == 0


@settings(max_examples=25, deadline=None)
@given(
    k=st.integers(2, 7),
    alpha=st.floats(0.01, 0.9),
    scale=st.floats(0.1, 10.0),
    seed=st.integers(0, 2**16),
)
def test_property_non_negative_and_zero_exactly_on_the_credal_set(k, alpha, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, k, dtype=torch.float64, generator=gen) * scale
    target = torch.randint(0, k, (6,), generator=gen)
    loss = label_relaxation_loss(logits, target, alpha, reduction="none")
    p_y = torch.softmax(logits, -1).gather(1, target[:, None])[:, 0]
    assert (loss >= 0).all()
    assert torch.equal(loss == 0, p_y >= 1 - alpha) or bool(
        ((p_y - (1 - alpha)).abs() < 1e-12).any()
    )
    # the value is the Bernoulli KL of (1 - alpha, alpha) and (p_y, 1 - p_y)
    bernoulli = (1 - alpha) * torch.log((1 - alpha) / p_y) + alpha * torch.log(alpha / (1 - p_y))
    torch.testing.assert_close(loss, torch.where(p_y >= 1 - alpha, 0.0, bernoulli))


def test_gradcheck_and_double_backward():
    logits, target = _inputs((1, 4), torch.float64, seed=2, scale=1.0)
    weight = torch.tensor([0.5, 1.0, 2.0, 1.5, 1.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: label_relaxation_loss(x, target, 0.2, weight=weight), (logits,)
    )
    small = logits[0, :3].detach().requires_grad_()
    assert torch.autograd.gradgradcheck(
        lambda x: label_relaxation_loss(x, target[0, :3], 0.2), (small,)
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_binary_is_the_two_class_case(dtype, reduction):
    logits = torch.tensor([[2.5, -0.3, 0.7, 4.0], [-3.0, 0.2, 1.1, -0.5]], dtype=dtype)
    logits.requires_grad_()
    target = torch.tensor([[1.0, 1.0, -100.0, 0.0], [0.0, 0.0, 1.0, 1.0]], dtype=dtype)
    weight = torch.tensor([2.0, 0.5], dtype=dtype)
    ours = label_relaxation_loss(
        logits, target, 0.15, reduction=reduction, weight=weight, binary=True
    )
    mask = target != -100
    label = torch.where(mask, target, torch.zeros_like(target)).long()
    two_class = torch.stack([torch.zeros_like(logits), logits], -1)  # softmax = (1 - p, p)
    per = _per_position(two_class, label, 0.15)
    reference = weighted_reduce(per, mask.to(dtype) * weight[label], reduction)
    assert_same_values_and_grads(ours, reference, [logits], dtype)


def test_half_precision_and_large_logits():
    logits, target = _inputs((8,), torch.float32)
    full = label_relaxation_loss(logits, target)
    half = label_relaxation_loss(logits.detach().bfloat16().requires_grad_(), target)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, atol=0.05, rtol=0.05)
    big, target = _inputs((8,), torch.float32, scale=1e4)
    loss = label_relaxation_loss(big, target)
    (grad,) = torch.autograd.grad(loss, big)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"alpha": 1.5}, r"alpha must be in \[0, 1\], got 1\.5"),
        ({"alpha": -0.1}, r"alpha must be in \[0, 1\], got -0\.1"),
        ({"target": None}, "target is required"),
        ({"target": torch.full((4, K), 1.0 / K)}, "needs class indices"),
    ],
)
def test_bad_input_is_refused_naming_it(kwargs, pattern):
    logits = torch.randn(4, K)
    arguments = {"target": torch.tensor([0, 1, 2, 3]), **kwargs}
    with pytest.raises(ValueError, match=pattern):
        label_relaxation_loss(logits, **arguments)


def test_source_matches_the_functional_form():
    logits, target = _inputs((2, 3), torch.float64)
    source = LabelRelaxation(0.25)
    assert source.name == "relax" and source.reference is None
    expected = label_relaxation_loss(logits, target, 0.25)
    assert_same_values_and_grads(
        SoftTargetLoss(source)(logits, target), expected, [logits], torch.float64
    )
    with pytest.raises(ValueError, match="alpha must be in"):
        LabelRelaxation(2.0)
