"""The differentiable (plain PyTorch) per-row losses of the fused kernel's modes.

Used by the fused kernel's backward under ``create_graph=True`` (double backward), where the
fused gradient buffer, a constant, cannot carry second-order terms. The formulas are those of
``fused_soft_target_loss``'s docstring, written with ``log_softmax``; they build (N, K)
temporaries, which is why the fused path does not use them otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from softlabel.kernels.fused import LossSpec


def _cross_entropy(log_p: Tensor, labels: Tensor | None, soft_target: Tensor | None) -> Tensor:
    """-sum_k c_k log p_k with c = onehot(labels) or the probability target."""
    if soft_target is not None:
        return -(soft_target.to(log_p.dtype) * log_p).sum(dim=1)
    return -log_p.gather(1, labels.unsqueeze(1)).squeeze(1)


def per_row_loss(
    logits: Tensor, labels: Tensor | None, valid: Tensor | None, spec: LossSpec
) -> Tensor:
    """Per-row loss (N,) of ``spec.mode``, differentiable to any order (0 at invalid rows)."""
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    s = logits.to(dtype)
    log_p = F.log_softmax(s, dim=1)
    hard = None
    if labels is not None or spec.soft_target is not None:
        hard = _cross_entropy(log_p, labels, spec.soft_target)
    if spec.mode == "hard":
        loss = hard
    elif spec.mode == "ls":
        if spec.prior is None:
            smooth = -log_p.mean(dim=1)
        elif spec.prior.dim() == 1:
            smooth = -(log_p @ spec.prior.to(dtype))
        else:  # class-conditional: u = M[y], or c M for a probability target c
            matrix = spec.prior.to(dtype)
            if spec.soft_target is not None:
                u = spec.soft_target.to(dtype) @ matrix
            else:
                u = matrix[labels]
            smooth = -(u * log_p).sum(dim=1)
        loss = (1.0 - spec.eps) * hard + spec.eps * smooth
    elif spec.mode == "kd":
        t = spec.temperature
        log_q = F.log_softmax(spec.teacher.to(dtype) / t, dim=1)
        log_r = F.log_softmax(s / t, dim=1)
        q = log_q.exp()
        kl = torch.where(q > 0, q * (log_q - log_r), torch.zeros_like(q)).sum(dim=1)
        loss = (spec.alpha * t * t) * kl
        if spec.alpha < 1.0:
            loss = loss + (1.0 - spec.alpha) * hard
    elif spec.mode == "reloop":
        p = log_p.exp()
        previous = spec.previous.to(dtype)
        if spec.soft_target is not None:
            hinge = (spec.soft_target.to(dtype) * (previous - p).clamp_min(0.0)).sum(dim=1)
        else:
            p_y = p.gather(1, labels.unsqueeze(1)).squeeze(1)
            prev_y = previous if previous.dim() == 1 else previous.gather(1, labels.unsqueeze(1))
            hinge = (prev_y.view(-1) - p_y).clamp_min(0.0)
        loss = (1.0 - spec.alpha) * hard + spec.alpha * hinge
    else:
        raise ValueError(f"unknown mode {spec.mode!r}")
    if valid is not None:
        loss = torch.where(valid, loss, torch.zeros_like(loss))
    return loss
