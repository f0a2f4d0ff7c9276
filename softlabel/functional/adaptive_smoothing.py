"""Margin-based label smoothing (MbLS; Liu et al., CVPR 2022): cross-entropy plus a linear
penalty on the logit distances to the largest logit that exceed a margin."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from softlabel.functional._reduction import _reduce
from softlabel.functional._validation import (
    _as_float,
    check_finite_rows,
    check_reduction,
    compute_dtype,
    prepare,
)
from softlabel.functional.cross_entropy import _per_position_cross_entropy
from softlabel.kernels import default_chunk_rows


def check_margin(margin: Any) -> float:
    value = _as_float("margin", margin)
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
    return value


def check_penalty(penalty: Any) -> float:
    value = _as_float("penalty", penalty)
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"penalty must be a finite number >= 0, got {penalty!r}")
    return value


class _MarginPenalty(torch.autograd.Function):
    """``R_i = sum_k max(0, max_j s_ij - s_ik - m)`` per row of ``s`` (N, K), chunk by chunk.

    Forward keeps only the row's arg-max; backward recomputes the active gaps per chunk:
    ``dR_i/ds_ik = -[gap_ik > m]`` and, at the arg-max, ``+ #{k: gap_ik > m}``. Apart from
    the gradient itself only (chunk_rows, K) temporaries exist.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, margin: float, chunk_rows: int) -> Tensor:  # type: ignore[override]
        n, k = logits.shape
        dtype = compute_dtype(logits)
        penalty = logits.new_zeros(n, dtype=dtype)
        top = torch.empty(n, dtype=torch.long, device=logits.device)
        for a in range(0, n, chunk_rows):
            s = logits[a : a + chunk_rows].to(dtype)
            high, top[a : a + chunk_rows] = s.max(dim=1)
            gap = torch.sub(high.unsqueeze(1) - margin, s).clamp_min_(0.0)
            penalty[a : a + chunk_rows] = gap.sum(dim=1)
        ctx.save_for_backward(logits, top)
        ctx.margin, ctx.chunk_rows = margin, chunk_rows
        return penalty

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        logits, top = ctx.saved_tensors
        dtype = compute_dtype(logits)
        grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
        for a in range(0, logits.shape[0], ctx.chunk_rows):
            s = logits[a : a + ctx.chunk_rows].to(dtype)
            idx = top[a : a + ctx.chunk_rows].unsqueeze(1)
            high = s.gather(1, idx)
            active = (high - s) > ctx.margin
            g = grad_output[a : a + ctx.chunk_rows].to(dtype).unsqueeze(1)
            chunk = torch.where(active, -g, torch.zeros((), dtype=dtype, device=s.device))
            count = active.sum(dim=1, keepdim=True).to(dtype)
            chunk = chunk.scatter_add(1, idx, g * count)
            grad[a : a + ctx.chunk_rows] = chunk
        return grad, None, None


def margin_penalty(logits: Tensor, margin: float, chunk_rows: int | None = None) -> Tensor:
    """``sum_k max(0, max_j s_j - s_k - m)`` per row of ``logits`` (N, K), in the compute
    dtype, with a chunked backward (see ``_MarginPenalty``)."""
    n, k = logits.shape
    dtype = compute_dtype(logits)
    rows = chunk_rows or default_chunk_rows(k, dtype, "ls", logits.device)
    return _MarginPenalty.apply(logits.contiguous(), float(margin), max(1, min(rows, max(n, 1))))


def margin_smoothing_loss(
    logits: Tensor,
    target: Tensor,
    margin: float = 10.0,
    penalty: float = 0.1,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
) -> Tensor:
    """Margin-based label smoothing: ``CE(s, y) + penalty * sum_k max(0, max_j s_j - s_k - m)``.

    Liu, Ben Ayed, Galdran and Dolz, "The Devil is in the Margins: Margin-based Label
    Smoothing for Network Calibration", CVPR 2022: label smoothing pushes every
    logit distance ``d_k = max_j s_j - s_k`` to 0 (an equality constraint); MbLS penalises
    only the distances above the margin ``m``, so only confident predictions (large
    distances) are smoothed, per sample and per class. The penalty is summed over classes
    per position (the authors' code averages it over classes as well: their
    ``alpha`` is ``penalty * K`` here). Multiclass only; ``target`` holds class indices or
    probabilities (for the CE term).
    """
    check_reduction(reduction)
    margin = check_margin(margin)
    penalty = check_penalty(penalty)
    positions = prepare(logits, target, ignore_index=ignore_index, weight=weight, binary=False)
    hard = _per_position_cross_entropy(logits, positions)
    k = logits.shape[-1]
    term = (penalty * margin_penalty(logits.reshape(-1, k), margin)).view(positions.mask.shape)
    zero = torch.zeros((), dtype=term.dtype, device=term.device)
    per_position = hard + torch.where(positions.mask, term, zero)  # ignored rows: 0
    check_finite_rows(per_position.detach(), {"logits": logits})
    return _reduce(per_position, positions.mask, positions.sample_weight, reduction)
