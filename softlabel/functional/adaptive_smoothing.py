"""Adaptive label smoothing.

- Margin-based label smoothing (MbLS; Liu et al., CVPR 2022): cross-entropy plus a linear
  penalty on the logit distances to the largest logit that exceed a margin.
- Confidence-adaptive label smoothing (AdaLabel; Wang et al., ACL 2021): label smoothing whose
  eps is computed per position from the model's own (detached) prediction.
"""

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


# --------------------------------------------------------------------------------------
# Confidence-adaptive label smoothing: eps per position from the model's own prediction
# (AdaLabel; Wang, Zheng, Jiang and Huang, ACL 2021), with a uniform smoothing distribution.


def check_confidence_margin(margin: Any) -> float:
    value = _as_float("margin", margin)
    if not 0.0 <= value < 1.0:  # NaN fails too
        raise ValueError(f"margin must be in [0, 1), got {margin!r}")
    return value


def check_power(power: Any) -> float:
    value = _as_float("power", power)
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"power must be a finite number >= 0, got {power!r}")
    return value


def _check_classes(num_classes: int, margin: float) -> float:
    """The cap ``1 / (1 + max v) - margin = (K - 1) / K - margin`` on eps (v uniform over the
    K - 1 other classes; ``prepare`` has checked K >= 2); a margin above ``(K - 1) / K``
    would make eps negative."""
    cap = (num_classes - 1) / num_classes - margin
    if cap < 0.0:
        raise ValueError(
            f"margin must be <= (K - 1) / K = {(num_classes - 1) / num_classes:.6g} for K = "
            f"{num_classes} classes (eps is capped at (K - 1) / K - margin), got {margin!r}"
        )
    return cap


def _confidence_rows(
    s: Tensor, y: Tensor, cap: float, power: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(loss, eps, lse)`` per row of ``s`` (n, K) in its dtype, labels ``y`` (n,).

    ``eps = (p_y / p_max) ** power * min(1 - p_max, cap)`` from the (constant) prediction,
    ``loss = (1 - eps) * (lse - s_y) + eps * (lse - mean_{k != y} s_k)``.
    """
    k = s.shape[1]
    lse = torch.logsumexp(s, dim=1)
    top = s.amax(dim=1)
    s_y = s.gather(1, y.unsqueeze(1)).squeeze(1)
    unsure = torch.clamp(-torch.expm1(top - lse), max=cap)  # min(1 - p_max, cap)
    eps = torch.exp(s_y - top).pow(power) * unsure  # (p_y / p_max) ** power, 0 ** 0 = 1
    ce = lse - s_y
    others = lse - (s.sum(dim=1) - s_y) / (k - 1)  # H(v, p), v uniform over k != y
    return ce + eps * (others - ce), eps, lse


class _ConfidenceSmoothing(torch.autograd.Function):
    """Per-row ``(1 - eps_i) CE_i + eps_i H(v_i, p_i)`` of ``s`` (N, K), chunk by chunk; eps is a
    constant (computed from the detached prediction, as the authors' code does).

    Forward keeps the row's log-sum-exp and eps; backward recomputes ``p`` per chunk:
    ``d loss_i / d s_ik = p_ik - q_ik`` with ``q_iy = 1 - eps_i`` and ``q_ik = eps_i / (K - 1)``
    elsewhere. Apart from the gradient itself only (chunk_rows, K) temporaries exist. Under
    ``create_graph=True`` backward differentiates the plain formula instead (exact second
    derivatives, at the plain formula's memory).
    """

    @staticmethod
    def forward(ctx, logits, index, valid, cap, power, chunk_rows):  # type: ignore[override]
        n = logits.shape[0]
        dtype = compute_dtype(logits)
        loss = logits.new_zeros(n, dtype=dtype)
        eps = logits.new_zeros(n, dtype=dtype)
        lse = logits.new_zeros(n, dtype=dtype)
        for a in range(0, n, chunk_rows):
            rows = slice(a, a + chunk_rows)
            loss[rows], eps[rows], lse[rows] = _confidence_rows(
                logits[rows].to(dtype), index[rows], cap, power
            )
        zero = torch.zeros((), dtype=dtype, device=logits.device)
        loss, eps = torch.where(valid, loss, zero), torch.where(valid, eps, zero)
        ctx.save_for_backward(logits, index, valid, eps, lse)
        ctx.chunk_rows = chunk_rows
        ctx.mark_non_differentiable(eps)
        return loss, eps

    @staticmethod
    def backward(ctx, grad_loss, _grad_eps):  # type: ignore[override]
        logits, index, valid, eps, lse = ctx.saved_tensors
        k = logits.shape[1]
        if torch.is_grad_enabled():  # create_graph=True: a gradient with a graph is wanted
            per_row = _plain_confidence_rows(logits, index, valid, eps)
            (grad,) = torch.autograd.grad(
                per_row, logits, grad_loss.to(per_row.dtype), create_graph=True
            )
            return grad, None, None, None, None, None
        dtype = compute_dtype(logits)
        grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
        zero = torch.zeros((), dtype=dtype, device=logits.device)
        for a in range(0, logits.shape[0], ctx.chunk_rows):
            rows = slice(a, a + ctx.chunk_rows)
            s = logits[rows].to(dtype)
            g = torch.where(valid[rows], grad_loss[rows].to(dtype), zero)
            e = eps[rows]
            off = e / (k - 1)  # q_k for k != y
            chunk = (torch.exp(s - lse[rows].unsqueeze(1)) - off.unsqueeze(1)) * g.unsqueeze(1)
            chunk = chunk.scatter_add(1, index[rows].unsqueeze(1), ((off - 1 + e) * g).unsqueeze(1))
            grad[rows] = torch.where(valid[rows].unsqueeze(1), chunk, zero)  # NaN padding: 0
        return grad, None, None, None, None, None


def _plain_confidence_rows(logits: Tensor, index: Tensor, valid: Tensor, eps: Tensor) -> Tensor:
    """The differentiable formula (for double backward) with the given constant eps."""
    dtype = compute_dtype(logits)
    zero = torch.zeros((), dtype=dtype, device=logits.device)
    s = torch.where(valid.unsqueeze(1), logits.to(dtype), zero)
    log_p = torch.log_softmax(s, dim=1)
    log_p_y = log_p.gather(1, index.unsqueeze(1)).squeeze(1)
    others = -(log_p.sum(dim=1) - log_p_y) / (logits.shape[1] - 1)
    return torch.where(valid, (1 - eps) * -log_p_y + eps * others, zero)


def _confidence_per_position(
    logits: Tensor, target: Tensor, margin: float, power: float, ignore_index: int, weight
):
    positions = prepare(logits, target, ignore_index=ignore_index, weight=weight, binary=False)
    if positions.index is None:
        raise ValueError(
            "confidence_smoothing_loss needs class indices as target (its eps is built from "
            "p_y); got class probabilities of the logits' shape"
        )
    k = logits.shape[-1]
    cap = _check_classes(k, margin)
    dtype = compute_dtype(logits)
    rows = default_chunk_rows(k, dtype, "ls", logits.device)
    flat = logits.reshape(-1, k).contiguous()
    loss, eps = _ConfidenceSmoothing.apply(
        flat,
        positions.index.reshape(-1),
        positions.mask.reshape(-1),
        cap,
        float(power),
        max(1, min(rows, max(flat.shape[0], 1))),
    )
    per_position = loss.view(positions.mask.shape)
    check_finite_rows(per_position.detach(), {"logits": logits})
    return per_position, eps.view(positions.mask.shape), positions


def confidence_smoothing_eps(
    logits: Tensor,
    target: Tensor,
    margin: float = 0.2,
    power: float = 2.0,
    *,
    ignore_index: int = -100,
) -> Tensor:
    """The smoothing ``eps_i`` that ``confidence_smoothing_loss`` uses at each position (the
    target's shape, 0 at ignored positions, no gradient): see its formula."""
    margin, power = check_confidence_margin(margin), check_power(power)
    with torch.no_grad():
        _, eps, _ = _confidence_per_position(logits, target, margin, power, ignore_index, None)
    return eps


def confidence_smoothing_loss(
    logits: Tensor,
    target: Tensor,
    margin: float = 0.2,
    power: float = 2.0,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
) -> Tensor:
    """Label smoothing with ``eps`` per position from the model's confidence (AdaLabel).

    Wang, Zheng, Jiang and Huang, "Diversifying Dialog Generation via Adaptive Label
    Smoothing", ACL 2021; the formula of the authors' code (github.com/lemon234071/AdaLabel,
    ``onmt/utils/loss.py``, ``AdaLabLoss._get_epsilon`` and ``forward``). With
    ``p = softmax(s)`` taken as a constant (detached), ``p_max = max_k p_k``:

        eps_i = (p_y / p_max) ** power * min(1 - p_max, 1 / (1 + max_k v_k) - margin)
        q_i   = (1 - eps_i) * onehot(y) + eps_i * v
        loss  = H(q_i, p_i) = (1 - eps_i) * CE(s, y) + eps_i * H(v, p)

    ``v`` is uniform over the K - 1 classes other than y (``v_y = 0``, ``max v = 1/(K-1)``),
    so the cap is ``(K - 1) / K - margin``. The paper's v is the prediction of an auxiliary
    bi-directional decoder; here it is uniform, which needs no extra model. Confident
    predictions (``p_max -> 1``) and wrong ones (``p_y << p_max``) get little smoothing;
    uncertain correct ones the most. Defaults ``margin = 0.2``, ``power = 2`` are the code's
    (``margin``, ``alpha_param``). The value is a cross-entropy (the code returns the KL
    ``KL(q || p) = H(q, p) - H(q)``: the same gradient). Multiclass only (no binary form);
    ``target`` holds class indices. ``mean`` averages over the positions that count.
    """
    check_reduction(reduction)
    margin, power = check_confidence_margin(margin), check_power(power)
    per_position, _, positions = _confidence_per_position(
        logits, target, margin, power, ignore_index, weight
    )
    return _reduce(per_position, positions.mask, positions.sample_weight, reduction)
