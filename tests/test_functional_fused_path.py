"""The public multiclass losses run through the fused kernel: gradcheck, no gradient to the
references, dispatch, half precision and corner inputs, against written-out formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import softlabel.functional as SF
import softlabel.functional._engine as fused_bridge
from softlabel import SoftTargetLoss
from softlabel.targets import Teacher

IGNORE = -100


def make_token_case(dtype=torch.float64, k=5):
    """(B, T, K) logits, (B, T) labels with ignored positions, teacher and previous probs."""
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, k, generator=gen, dtype=dtype).requires_grad_()
    y = torch.randint(0, k, (2, 3), generator=gen)
    y[0, 1] = IGNORE
    teacher = torch.randn(2, 3, k, generator=gen, dtype=dtype)
    previous = torch.softmax(torch.randn(2, 3, k, generator=gen, dtype=dtype), -1)
    return s, y, teacher, previous


def reference(name, s, y, teacher, previous, weight=None):
    """Weighted mean of the written-out per-position losses (log_softmax, explicit targets)."""
    mask = y != IGNORE
    y0 = y.masked_fill(~mask, 0)
    log_p = F.log_softmax(s, -1)
    ce = -log_p.gather(-1, y0[..., None])[..., 0]
    if name == "ce":
        loss = ce
    elif name == "ls":
        loss = 0.9 * ce - 0.1 * log_p.mean(-1)
    elif name == "kd":
        log_q = F.log_softmax(teacher / 2.0, -1)
        kl = (log_q.exp() * (log_q - F.log_softmax(s / 2.0, -1))).sum(-1)
        loss = 0.3 * ce + 0.7 * 4.0 * kl
    else:
        p_y = log_p.exp().gather(-1, y0[..., None])[..., 0]
        q_y = previous.gather(-1, y0[..., None])[..., 0]
        loss = 0.6 * ce + 0.4 * torch.relu(q_y - p_y)
    w = mask.to(s.dtype) if weight is None else weight[y0] * mask
    return (loss * w).sum() / w.sum()


def public(name, s, y, teacher, previous, **kw):
    if name == "ce":
        return SF.cross_entropy_loss(s, y, **kw)
    if name == "ls":
        return SF.label_smoothing_loss(s, y, 0.1, **kw)
    if name == "kd":
        return SF.distillation_loss(s, teacher, y, temperature=2.0, alpha=0.7, **kw)
    return SF.self_correction_loss(s, y, previous, alpha=0.4, **kw)


NAMES = ["ce", "ls", "kd", "reloop"]


@pytest.mark.parametrize("name", NAMES)
def test_token_level_weighted_matches_reference_and_gradcheck(name):
    s, y, teacher, previous = make_token_case()
    weight = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5], dtype=torch.float64)
    out = public(name, s, y, teacher, previous, weight=weight)
    ref = reference(name, s, y, teacher, previous, weight)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    (grad,) = torch.autograd.grad(out, s)
    (ref_grad,) = torch.autograd.grad(ref, s)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradcheck(
        lambda x: public(name, x, y, teacher, previous, weight=weight), (s,)
    )


@pytest.mark.parametrize("name", NAMES)
def test_multiclass_goes_through_the_kernel_once_binary_does_not(name, monkeypatch):
    calls = []
    real = fused_bridge.fused_per_row

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(fused_bridge, "fused_per_row", counting)
    s, y, teacher, previous = make_token_case()
    public(name, s, y, teacher, previous).backward()
    assert calls == [torch.Size([6, 5])]
    binary_s = torch.randn(4, dtype=torch.float64, requires_grad=True)
    binary_y = torch.tensor([0, 1, 1, 0])
    public(name, binary_s, binary_y, torch.randn(4), torch.rand(4)).backward()
    assert len(calls) == 1


def test_teacher_and_previous_get_no_gradient():
    s, y, teacher, previous = make_token_case()
    teacher.requires_grad_()
    previous.requires_grad_()
    SF.distillation_loss(s, teacher, y).backward()
    SF.self_correction_loss(s, y, previous).backward()
    assert teacher.grad is None and previous.grad is None and s.grad is not None


def test_module_and_functional_give_identical_values_and_gradients():
    s, y, teacher, _ = make_token_case(torch.float32)
    weight = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5])
    module = SoftTargetLoss(Teacher(temperature=2.0, alpha=0.7), weight=weight)
    out_module = module(s, y, teacher)
    (grad_module,) = torch.autograd.grad(out_module, s)
    out_fn = SF.distillation_loss(s, teacher, y, temperature=2.0, alpha=0.7, weight=weight)
    (grad_fn,) = torch.autograd.grad(out_fn, s)
    assert torch.equal(out_module, out_fn) and torch.equal(grad_module, grad_fn)


@pytest.mark.parametrize("name", NAMES)
def test_all_ignored_gives_zero_and_a_zero_gradient(name):
    s, y, teacher, previous = make_token_case()
    y = torch.full_like(y, IGNORE)
    out = public(name, s, y, teacher, previous)
    out.backward()
    assert out.item() == 0.0 and torch.equal(s.grad, torch.zeros_like(s))


def test_reduction_none_keeps_the_target_shape_with_zeros_at_ignored():
    s, y, _, _ = make_token_case()
    out = SF.label_smoothing_loss(s, y, 0.1, reduction="none")
    assert out.shape == y.shape and out[0, 1] == 0.0
    ref = torch.where(
        y != IGNORE,
        F.cross_entropy(s.transpose(1, 2), y, label_smoothing=0.1, reduction="none"),
        0.0,
    )
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_half_logits_computed_in_float32_with_a_half_gradient():
    s, y, _, _ = make_token_case(torch.float32)
    half = s.detach().to(torch.bfloat16).requires_grad_()
    out = SF.cross_entropy_loss(half, y)
    out.backward()
    s32 = half.detach().float().requires_grad_()
    ref = F.cross_entropy(s32.transpose(1, 2), y, ignore_index=IGNORE)
    ref.backward()
    assert out.dtype == torch.float32 and half.grad.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(half.grad.float(), s32.grad, rtol=1e-2, atol=1e-3)


def test_non_contiguous_and_no_grad_logits():
    s, y, _, _ = make_token_case()
    base = s.detach().transpose(0, 1).contiguous().requires_grad_()  # (3, 2, K)
    view = base.transpose(0, 1)  # non-contiguous (2, 3, K)
    out = SF.cross_entropy_loss(view, y)
    out.backward()
    ref_base = base.detach().clone().requires_grad_()
    ref = F.cross_entropy(ref_base.transpose(0, 1).transpose(1, 2), y, ignore_index=IGNORE)
    ref.backward()
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(base.grad, ref_base.grad, rtol=1e-10, atol=1e-10)
    frozen = SF.cross_entropy_loss(s.detach(), y)
    assert not frozen.requires_grad
    torch.testing.assert_close(frozen, ref.detach(), rtol=1e-10, atol=1e-10)
