"""margin_smoothing_loss / MarginSmoothing (MbLS) against the paper's formula written out."""

import pytest
import torch
import torch.nn.functional as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from loss_reference import SHAPES, TOL, K, assert_same_values_and_grads, masked_reduce

from softlabel import SoftTargetLoss
from softlabel.functional import margin_smoothing_loss
from softlabel.kernels import fused_soft_target_loss
from softlabel.schedules import Linear
from softlabel.targets import MarginSmoothing


def _reference(logits, target, margin, penalty, reduction, weight):
    """Liu et al. (2022): CE + lambda * sum_k max(0, max_j l_j - l_k - m), per position."""
    mask = target != -100
    safe = torch.where(mask, target, torch.zeros_like(target))
    ce = tf.cross_entropy(logits.reshape(-1, K), safe.reshape(-1), reduction="none")
    distance = logits.max(dim=-1, keepdim=True).values - logits
    term = torch.relu(distance - margin).sum(-1)
    per = ce.view(target.shape) + penalty * term
    return masked_reduce(per, mask, safe, weight, reduction)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_written_out_formula(dtype, shape, reduction, weighted):
    logits = (torch.randn(*shape, K, dtype=dtype) * 6).requires_grad_()
    target = torch.randint(0, K, shape)
    target.view(-1)[::4] = -100
    weight = torch.rand(K, dtype=dtype) + 0.1 if weighted else None
    ours = margin_smoothing_loss(logits, target, 4.0, 0.3, reduction=reduction, weight=weight)
    reference = _reference(logits, target, 4.0, 0.3, reduction, weight)
    assert_same_values_and_grads(ours, reference, [logits], dtype)


def margin_penalty(logits, margin, chunk_rows=None):
    """The penalty alone through the engine's mode: the loss with penalty 1 minus the CE."""
    target = torch.zeros(logits.shape[0], dtype=torch.long)
    loss = fused_soft_target_loss(
        logits, target, mode="margin", margin=margin, penalty=1.0, chunk_rows=chunk_rows
    )
    return loss - fused_soft_target_loss(logits, target, mode="hard", chunk_rows=chunk_rows)


def test_chunked_penalty_does_not_depend_on_the_chunk_size():
    logits = (torch.randn(11, 7, dtype=torch.float64) * 5).requires_grad_()
    cotangent = torch.rand(11, dtype=torch.float64)
    whole = margin_penalty(logits, 2.0)
    (grad_whole,) = torch.autograd.grad(whole, logits, cotangent)
    for rows in (1, 3, 11):
        chunked = margin_penalty(logits, 2.0, chunk_rows=rows)
        (grad,) = torch.autograd.grad(chunked, logits, cotangent)
        torch.testing.assert_close(chunked, whole, **TOL[torch.float64])
        torch.testing.assert_close(grad, grad_whole, **TOL[torch.float64])


def test_half_precision_is_computed_in_float32():
    logits = (torch.randn(4, K) * 6).to(torch.bfloat16).requires_grad_()
    target = torch.tensor([0, 1, 2, 3])
    ours = margin_smoothing_loss(logits, target, 3.0, 0.5)
    assert ours.dtype == torch.float32
    reference = _reference(logits.float(), target, 3.0, 0.5, "mean", None)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    ours.backward()
    assert logits.grad.dtype == torch.bfloat16


def test_ignored_rows_may_hold_nan_and_large_margin_is_cross_entropy():
    logits = torch.randn(4, K, dtype=torch.float64) * 3
    target = torch.tensor([1, -100, 0, 4])
    logits[1] = float("nan")
    x = logits.clone().requires_grad_()
    ours = margin_smoothing_loss(x, target, 1.0, 0.5)
    ours.backward()
    assert torch.isfinite(ours) and x.grad[1].eq(0).all()
    keep = target != -100
    plain = margin_smoothing_loss(logits[keep], target[keep], 1e6, 0.5)
    torch.testing.assert_close(plain, tf.cross_entropy(logits[keep], target[keep]))


def test_authors_code_averages_over_classes():
    """Their code: CE + alpha * mean over the N x K entries of relu(d - m), which is this
    loss with penalty = alpha / K."""
    logits = torch.randn(6, K, dtype=torch.float64) * 8
    target = torch.randint(0, K, (6,))
    distance = logits.max(dim=1, keepdim=True).values - logits
    theirs = tf.cross_entropy(logits, target) + 0.1 * torch.relu(distance - 10.0).mean()
    ours = margin_smoothing_loss(logits, target, 10.0, 0.1 / K)
    torch.testing.assert_close(ours, theirs, **TOL[torch.float64])


def test_source_equals_functional_and_schedules():
    source = MarginSmoothing(margin=Linear(10.0, 2.0), penalty=0.2)
    assert source.name == "ls_adaptive" and source.reference is None
    source.set_progress(0.5)
    assert source.values() == pytest.approx({"margin": 6.0, "penalty": 0.2})
    logits = torch.randn(2, 3, K, requires_grad=True) * 5
    target = torch.randint(0, K, (2, 3))
    torch.testing.assert_close(
        SoftTargetLoss(source)(logits, target), margin_smoothing_loss(logits, target, 6.0, 0.2)
    )
    with pytest.raises(ValueError, match="binary"):
        SoftTargetLoss(source, binary=True)(torch.randn(4), torch.tensor([0.0, 1.0, 1.0, 0.0]))


def test_gradcheck():
    logits = (torch.randn(2, 3, 4, dtype=torch.float64) * 5).requires_grad_()
    target = torch.tensor([[0, 3, -100], [2, 1, 1]])
    weight = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: margin_smoothing_loss(x, target, 2.0, 0.4, weight=weight), (logits,)
    )


def test_bad_input_is_refused():
    logits, target = torch.randn(3, K), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="margin must be a finite number >= 0, got -1"):
        margin_smoothing_loss(logits, target, margin=-1.0)
    with pytest.raises(ValueError, match="penalty must be a finite number >= 0, got nan"):
        margin_smoothing_loss(logits, target, penalty=float("nan"))
    with pytest.raises(ValueError, match="margin"):
        MarginSmoothing(margin=Linear(1.0, -1.0))
    bad = logits.clone()
    bad[2, 1] = float("inf")
    with pytest.raises(ValueError, match=r"logits must be finite.*\(2, 1\)"):
        margin_smoothing_loss(bad, target)


@settings(max_examples=20, deadline=None)
@given(
    k=st.integers(2, 8),
    margin=st.floats(0.0, 20.0),
    scale=st.floats(0.1, 30.0),
    seed=st.integers(0, 2**16),
)
def test_property_penalty_is_zero_exactly_within_the_margin(k, margin, scale, seed):
    """loss >= CE, with equality exactly when every logit distance is at most the margin."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, k, generator=generator, dtype=torch.float64) * scale
    target = torch.randint(0, k, (6,), generator=generator)
    ours = margin_smoothing_loss(logits, target, margin, 0.5, reduction="none")
    ce = tf.cross_entropy(logits, target, reduction="none")
    within = (logits.max(dim=1, keepdim=True).values - logits <= margin).all(dim=1)
    assert bool((ours >= ce - 1e-12).all())
    torch.testing.assert_close(ours[within], ce[within])
    assert bool((ours[~within] >= ce[~within]).all())
