"""Mode ``reloop``: ReLoop self-correction (Cai et al., SIGIR 2022).

(1 - alpha) CE + alpha max(0, q_y - p_y) with q the previous model version's probabilities:
the new version is pushed where it is less sure of the true class than the previous one.
Binary, p = sigmoid(logit): y max(0, q - p) + (1 - y) max(0, p - q).
"""

from __future__ import annotations

import torch
from torch import Tensor

from softlabel.kernels.checks import check_alpha
from softlabel.kernels.modes.base import Mode
from softlabel.kernels.modes.smoothing import binary_cross_entropy, cross_entropy_rows
from softlabel.kernels.rowmath import as_compute, softmax_log_z, source_rows


def reloop_chunk(s: Tensor, y: Tensor, g: Tensor, alpha: float, previous_y: Tensor) -> Tensor:
    """ReLoop self-correction: (1 - alpha) CE + alpha max(0, q_y - p_y).

    Where the hinge is active, d(-p_y)/ds = p_y (p - onehot_y), so the whole gradient is the
    cross-entropy gradient scaled per row: c (p - onehot_y), c = (1 - alpha) + alpha [q_y > p_y] p_y.
    """
    src = source_rows(s, g)
    s_y = src.gather(1, y).view(-1)
    m, log_z = softmax_log_z(src, g)
    ce = (m - s_y) + log_z
    p_y = g.gather(1, y).view(-1)
    gap = previous_y - p_y
    loss = (1.0 - alpha) * ce + alpha * gap.clamp_min(0.0)
    c = (1.0 - alpha) + alpha * (gap > 0).to(g.dtype) * p_y
    g.mul_(c.unsqueeze(1))
    g.scatter_add_(1, y, -c.unsqueeze(1))
    return loss


def reloop_soft_target_chunk(
    s: Tensor, q: Tensor, g: Tensor, alpha: float, previous: Tensor
) -> Tensor:
    """ReLoop against a probability target q: (1 - alpha) H(q, p) + alpha sum_k q_k max(0,
    prev_k - p_k), which is the paper's max(0, prev_y - p_y) when q is one-hot.

    With h = q * [prev > p] * p: grad = ((1 - alpha) sum(q) + alpha sum(h)) p - (1 - alpha) q
    - alpha h.
    """
    src = source_rows(s, g)
    q = as_compute(q, g)
    q_sum = q.sum(dim=1)
    s_q = torch.linalg.vecdot(src, q)
    m, log_z = softmax_log_z(src, g)
    ce = (q_sum * m - s_q) + q_sum * log_z
    gap = as_compute(previous, g) - g
    hinge = torch.linalg.vecdot(q, gap.clamp_min(0.0))
    h = gap.gt_(0).to(g.dtype).mul_(q).mul_(g)
    c = (1.0 - alpha) * q_sum + alpha * h.sum(dim=1)
    g.mul_(c.unsqueeze(1)).sub_(q, alpha=1.0 - alpha).sub_(h, alpha=alpha)
    return (1.0 - alpha) * ce + alpha * hinge


class SelfCorrection(Mode):
    """``reloop``: params ``alpha``; ``spec.previous`` the previous probabilities (N, K), or
    q_y already gathered (N,) with class indices."""

    name = "reloop"
    defaults = {"alpha": 0.5}
    checks = {"alpha": check_alpha}
    previous = True
    has_binary = True

    def logits_in_grad(self, spec) -> bool:
        return True

    def chunk(self, s, y, q, g, t, prev, work, spec, state) -> Tensor:
        if q is not None:
            return reloop_soft_target_chunk(s, q, g, spec.alpha, prev)
        prev_y = prev if prev.dim() == 1 else prev.gather(1, y).view(-1)
        return reloop_chunk(s, y, g, spec.alpha, prev_y.to(g.dtype))

    def reference(self, s, labels, spec, teacher=None) -> Tensor:
        log_p = torch.log_softmax(s, dim=1)
        hard = cross_entropy_rows(log_p, labels, spec.soft_target)
        p = log_p.exp()
        previous = spec.previous.to(s.dtype)
        if spec.soft_target is not None:
            hinge = (spec.soft_target.to(s.dtype) * (previous - p).clamp_min(0.0)).sum(dim=1)
        else:
            p_y = p.gather(1, labels.unsqueeze(1)).squeeze(1)
            prev_y = previous if previous.dim() == 1 else previous.gather(1, labels.unsqueeze(1))
            hinge = (prev_y.view(-1) - p_y).clamp_min(0.0)
        return (1.0 - spec.alpha) * hard + spec.alpha * hinge

    def binary(self, logits, target, spec, reference) -> Tensor:
        hard = binary_cross_entropy(logits, target)
        gap = spec.previous - torch.sigmoid(logits)
        correction = target * torch.relu(gap) + (1 - target) * torch.relu(-gap)
        return (1 - spec.alpha) * hard + spec.alpha * correction
