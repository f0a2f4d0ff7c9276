"""The differentiable (plain PyTorch) per-row losses of the fused kernel's modes.

Used by the fused kernel's backward under ``create_graph=True`` (double backward), where the
fused gradient buffer, a constant, cannot carry second-order terms. The formulas are those of
``fused_soft_target_loss``'s docstring, written with ``log_softmax``; they build (N, K)
temporaries, which is why the fused path does not use them otherwise.
"""

from __future__ import annotations

import math
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


def _standardized(x: Tensor) -> Tensor:
    """(x - mean) / (std + 1e-7) per row, std with Bessel's correction."""
    return (x - x.mean(dim=1, keepdim=True)) / (x.std(dim=1, keepdim=True) + 1e-7)


def _kl_terms(log_a: Tensor, log_b: Tensor) -> Tensor:
    """a (log a - log b) element-wise from log-probabilities (0 where a = 0)."""
    a = log_a.exp()
    return torch.where(a > 0, a * (log_a - log_b), torch.zeros_like(a))


def _kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    """KL(a || b) per row from log-probabilities (0 log 0 = 0)."""
    a = log_a.exp()
    return torch.where(a > 0, a * (log_a - log_b), torch.zeros_like(a)).sum(dim=1)


def _divergence(log_q: Tensor, log_r: Tensor, spec: LossSpec) -> Tensor:
    """D(teacher q, student r) of ``spec.divergence`` per row."""
    from softlabel.kernels.fused import effective_divergence

    divergence = effective_divergence(spec)
    if divergence == "forward_kl":
        return _kl(log_q, log_r)
    if divergence == "reverse_kl":
        return _kl(log_r, log_q)
    if divergence == "tvd":
        return 0.5 * (log_q.exp() - log_r.exp()).abs().sum(dim=1)
    beta = spec.beta
    log_m = torch.logaddexp(log_q + math.log(beta), log_r + math.log1p(-beta))
    return beta * _kl(log_q, log_m) + (1.0 - beta) * _kl(log_r, log_m)


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
        student, teacher = s, spec.teacher.to(dtype)
        if spec.standardize:
            student, teacher = _standardized(student), _standardized(teacher)
        log_q = F.log_softmax(teacher / t, dim=1)
        log_r = F.log_softmax(student / t, dim=1)
        loss = (spec.alpha * t * t) * _divergence(log_q, log_r, spec)
        if spec.alpha < 1.0:
            loss = loss + (1.0 - spec.alpha) * hard
    elif spec.mode == "dkd":
        t = spec.temperature
        log_r = F.log_softmax(s / t, dim=1)
        log_q = F.log_softmax(spec.teacher.to(dtype) / t, dim=1)
        target = F.one_hot(labels, s.shape[1]).bool()
        log_r_y, log_q_y = log_r[target], log_q[target]
        log_r_rest = torch.logsumexp(log_r.masked_fill(target, float("-inf")), dim=1)
        log_q_rest = torch.logsumexp(log_q.masked_fill(target, float("-inf")), dim=1)
        tckd = _kl_terms(log_q_y, log_r_y) + _kl_terms(log_q_rest, log_r_rest)
        log_q_hat = log_q - log_q_rest.unsqueeze(1)  # over k != y (the y entry is dropped)
        log_r_hat = log_r - log_r_rest.unsqueeze(1)
        nckd_terms = _kl_terms(log_q_hat, log_r_hat)
        nckd = torch.where(target, torch.zeros_like(nckd_terms), nckd_terms).sum(dim=1)
        soft = (t * t) * (spec.tckd_weight * tckd + spec.nckd_weight * nckd)
        loss = soft + spec.ce_weight * hard
    elif spec.mode == "relax":
        # KL(p_r || p) = (1 - a) log((1 - a) / p_y) + a log(a / (1 - p_y)): its gradient is
        # p - p_r (the p_r path adds 0), its second derivative that of the gradient field
        alpha = spec.alpha
        target = F.one_hot(labels, s.shape[1]).bool()
        log_p_y = log_p[target]
        kl = torch.zeros_like(log_p_y)
        if alpha < 1.0:
            kl = kl + (1.0 - alpha) * (math.log1p(-alpha) - log_p_y)
        if alpha > 0.0:
            log_rest = torch.logsumexp(log_p.masked_fill(target, float("-inf")), dim=1)
            kl = kl + alpha * (math.log(alpha) - log_rest)
        loss = torch.where(log_p_y.exp() < 1.0 - alpha, kl, torch.zeros_like(kl))
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
