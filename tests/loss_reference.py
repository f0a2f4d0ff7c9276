"""Shared pieces of the loss tests: tolerances, shapes, inputs, and the value+gradient check.

The reference formulas themselves stay written out in each test file.
"""

from __future__ import annotations

import torch

TOL = {torch.float32: {"atol": 1e-5, "rtol": 1e-5}, torch.float64: {"atol": 1e-10, "rtol": 1e-10}}
SHAPES = [(6,), (2, 3)]  # position shapes: (N, K) and token-level (B, T, V) logits
K = 5


def multiclass_inputs(shape, dtype, with_ignore):
    """Logits ``(*shape, K)`` that require grad and targets ``shape`` (every 3rd ignored)."""
    logits = torch.randn(*shape, K, dtype=dtype, requires_grad=True)
    target = torch.randint(0, K, shape)
    if with_ignore:
        target.view(-1)[::3] = -100
    return logits, target


def assert_same_values_and_grads(ours, reference, inputs, dtype):
    """Equal values, and equal gradients w.r.t. ``inputs`` for a random cotangent."""
    cotangent = torch.rand_like(reference)
    ours_grads = torch.autograd.grad(ours, inputs, cotangent)
    reference_grads = torch.autograd.grad(reference, inputs, cotangent)
    torch.testing.assert_close(ours, reference, **TOL[dtype])
    for ours_grad, reference_grad in zip(ours_grads, reference_grads):
        torch.testing.assert_close(ours_grad, reference_grad, **TOL[dtype])


def weighted_reduce(per, sample_weight, reduction):
    """The documented reduction: ``sum(w_i l_i)``, or divided by ``sum(w_i)`` for mean."""
    per = per * sample_weight
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    return per.sum() / sample_weight.sum()


def masked_reduce(per, mask, safe, weight, reduction):
    """``weighted_reduce`` of per-position values with the ignored positions zeroed and
    weights ``mask * weight[safe]`` (``safe`` = the target with ignored positions set to 0)."""
    sample_weight = mask.to(per.dtype)
    if weight is not None:
        sample_weight = sample_weight * weight[safe]
    return weighted_reduce(torch.where(mask, per, torch.zeros_like(per)), sample_weight, reduction)
