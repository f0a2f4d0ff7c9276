"""Mode ``relax``: label relaxation (Lienen and Huellermeier, AAAI 2021).

KL(p_r || p) where p_y < 1 - alpha, else 0; p_r_y = 1 - alpha and p_r_k = alpha p_k / (1 - p_y)
(the closest distribution to p in the credal set {q: q_y >= 1 - alpha}), a constant.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from softlabel.kernels.checks import check_alpha
from softlabel.kernels.modes.base import Mode
from softlabel.kernels.rowmath import softmax_log_z, source_rows


def relax_chunk(s: Tensor, y: Tensor, g: Tensor, alpha: float) -> Tensor:
    """On the non-target classes p_r / p = alpha / (1 - p_y), so
    loss = (1 - alpha) log((1 - alpha) / p_y) + alpha log(alpha / (1 - p_y)), with log p_y from
    the logits; grad = p - p_r: p_k (1 - alpha / (1 - p_y)) for k != y, p_y - (1 - alpha) at y.
    """
    src = source_rows(s, g)
    s_y = src.gather(1, y).view(-1)
    m, log_z = softmax_log_z(src, g)
    p_y = g.gather(1, y).view(-1)
    active = p_y < 1.0 - alpha
    loss = (1.0 - alpha) * (math.log1p(-alpha) - ((s_y - m) - log_z)) if alpha < 1.0 else 0.0
    if alpha > 0.0:
        rest = torch.log1p(-p_y).neg_().add_(math.log(alpha))  # log(alpha / (1 - p_y))
        loss = loss + alpha * rest
        c = (1.0 - p_y).reciprocal_().mul_(-alpha).add_(1.0)
    else:
        c = torch.ones_like(p_y)
    zero = torch.zeros_like(p_y)
    g.mul_(torch.where(active, c, zero).unsqueeze(1))
    g.scatter_(1, y, torch.where(active, p_y - (1.0 - alpha), zero).unsqueeze(1))
    return torch.where(active, loss, zero)


def _relaxed_kl(log_p_y: Tensor, log_rest: Tensor, alpha: float) -> Tensor:
    """(1 - a) log((1 - a) / p_y) + a log(a / (1 - p_y)) where p_y < 1 - a, else 0."""
    kl = torch.zeros_like(log_p_y)
    if alpha < 1.0:
        kl = kl + (1.0 - alpha) * (math.log1p(-alpha) - log_p_y)
    if alpha > 0.0:
        kl = kl + alpha * (math.log(alpha) - log_rest)
    return torch.where(log_p_y.exp() < 1.0 - alpha, kl, torch.zeros_like(kl))


class Relaxation(Mode):
    """``relax``: params ``alpha``; needs class indices."""

    name = "relax"
    defaults = {"alpha": 0.1}
    checks = {"alpha": check_alpha}
    soft_target = False
    has_binary = True

    def chunk(self, s, y, q, g, t, prev, work, spec, state) -> Tensor:
        return relax_chunk(s, y, g, spec.alpha)

    def reference(self, s, labels, spec, teacher=None) -> Tensor:
        # its gradient is p - p_r (the p_r path adds 0), its second derivative that of the
        # gradient field
        log_p = torch.log_softmax(s, dim=1)
        target = F.one_hot(labels, s.shape[1]).bool()
        log_rest = torch.logsumexp(log_p.masked_fill(target, float("-inf")), dim=1)
        return _relaxed_kl(log_p[target], log_rest, spec.alpha)

    def binary(self, logits, target, spec, reference) -> Tensor:
        """The 2-class case, p_y = sigmoid(+-logit)."""
        signed = torch.where(target > 0, logits, -logits)
        return _relaxed_kl(F.logsigmoid(signed), F.logsigmoid(-signed), spec.alpha)
