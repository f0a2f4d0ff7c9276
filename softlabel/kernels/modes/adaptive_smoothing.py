"""Modes ``margin`` and ``confidence``: label smoothing that adapts to each position.

- ``margin``: margin-based label smoothing (MbLS; Liu et al., CVPR 2022),
  CE + penalty sum_k max(0, max_j s_j - s_k - margin).
- ``confidence``: AdaLabel's confidence-adaptive eps (Wang et al., ACL 2021) with a uniform
  smoothing distribution over the other classes: (1 - eps_i) CE + eps_i H(v, p),
  eps_i = (p_y / p_max)^power min(1 - p_max, (K - 1) / K - margin) from the detached
  prediction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from softlabel.kernels.checks import (
    check_confidence_margin,
    check_margin,
    check_penalty,
    check_power,
)
from softlabel.kernels.modes.base import Mode
from softlabel.kernels.modes.smoothing import ce_ls_chunk, cross_entropy_rows
from softlabel.kernels.rowmath import softmax_log_z, source_rows


class MarginSmoothing(Mode):
    """``margin``: params ``margin``, ``penalty``.

    R_i = sum_k max(0, max_j s_ij - s_ik - m); dR_i/ds_ik = -[gap_ik > m] and, at the
    arg-max, + #{k: gap_ik > m} (one arg-max per row, the first).
    """

    name = "margin"
    defaults = {"margin": 10.0, "penalty": 0.1}
    checks = {"margin": check_margin, "penalty": check_penalty}

    def work_buffers(self, spec) -> int:
        return 1

    def chunk(self, s, y, q, g, t, prev, work, spec, state) -> Tensor:
        active = work[0][: s.shape[0]]
        src = source_rows(s, active)  # the penalty is taken before the CE overwrites g
        high, top = src.max(dim=1)
        torch.sub(high.unsqueeze(1) - spec.margin, src, out=active).clamp_min_(0.0)
        penalty = active.sum(dim=1)
        count = active.gt_(0).sum(dim=1)  # active: 1 where the gap exceeds the margin
        loss = ce_ls_chunk(s, y, g, 0.0, None, 1.0, q)
        g.sub_(active, alpha=spec.penalty)
        g.scatter_add_(1, top.unsqueeze(1), (spec.penalty * count).to(g.dtype).unsqueeze(1))
        return loss + spec.penalty * penalty

    def reference(self, s, labels, spec, teacher=None) -> Tensor:
        hard = cross_entropy_rows(F.log_softmax(s, dim=1), labels, spec.soft_target)
        gaps = (s.amax(dim=1, keepdim=True) - s - spec.margin).clamp_min(0.0)
        return hard + spec.penalty * gaps.sum(dim=1)


def confidence_eps(s: Tensor, y: Tensor, cap: float, power: float) -> Tensor:
    """eps (rows,) of logit rows ``s`` (compute dtype) and labels ``y`` (rows,):
    (p_y / p_max)^power min(1 - p_max, cap), 0^0 = 1."""
    lse = torch.logsumexp(s, dim=1)
    top = s.amax(dim=1)
    s_y = s.gather(1, y.unsqueeze(1)).squeeze(1)
    unsure = torch.clamp(-torch.expm1(top - lse), max=cap)  # min(1 - p_max, cap)
    return torch.exp(s_y - top).pow(power) * unsure


def confidence_cap(num_classes: int, margin: float) -> float:
    """The cap 1 / (1 + max v) - margin = (K - 1) / K - margin on eps."""
    return (num_classes - 1) / num_classes - margin


class ConfidenceSmoothing(Mode):
    """``confidence``: params ``margin``, ``power``; needs class indices.

    Per row: loss = (1 - eps) (lse - s_y) + eps (lse - mean_{k != y} s_k); the gradient
    p - q_i with q_iy = 1 - eps and q_ik = eps / (K - 1) elsewhere (eps a constant).
    """

    name = "confidence"
    defaults = {"margin": 0.2, "power": 2.0}
    checks = {"margin": check_confidence_margin, "power": check_power}
    soft_target = False

    def logits_in_grad(self, spec) -> bool:
        return True

    def check(self, spec, mask, num_classes) -> None:
        """A margin above (K - 1) / K would make eps negative."""
        if confidence_cap(num_classes, spec.margin) < 0.0:
            raise ValueError(
                f"margin must be <= (K - 1) / K = {(num_classes - 1) / num_classes:.6g} for "
                f"K = {num_classes} classes (eps is capped at (K - 1) / K - margin), got "
                f"{spec.margin!r}"
            )

    def chunk(self, s, y, q, g, t, prev, work, spec, state) -> Tensor:
        k = s.shape[1]
        cap = confidence_cap(k, spec.margin)
        src = source_rows(s, g)
        s_y = src.gather(1, y).view(-1)
        others = (src.sum(dim=1) - s_y) / (k - 1)
        m, log_z = softmax_log_z(src, g)
        unsure = torch.clamp(-torch.expm1(-log_z), max=cap)  # 1 - p_max = 1 - 1/Z
        eps = torch.exp(s_y - m).pow(spec.power) * unsure
        ce = (m - s_y) + log_z
        smooth = (m - others) + log_z
        off = eps / (k - 1)
        g.sub_(off.unsqueeze(1))
        g.scatter_add_(1, y, (off - (1.0 - eps)).unsqueeze(1))
        return ce + eps * (smooth - ce)

    def reference(self, s, labels, spec, teacher=None) -> Tensor:
        k = s.shape[1]
        with torch.no_grad():
            eps = confidence_eps(s.detach(), labels, confidence_cap(k, spec.margin), spec.power)
        log_p = F.log_softmax(s, dim=1)
        log_p_y = log_p.gather(1, labels.unsqueeze(1)).squeeze(1)
        others = -(log_p.sum(dim=1) - log_p_y) / (k - 1)
        return (1 - eps) * -log_p_y + eps * others
