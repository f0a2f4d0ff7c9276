"""Per-chunk math of the fused soft-target loss.

Every function takes a chunk of logit rows ``s`` (rows, K), the labels ``y`` (rows, 1)
(ignored rows already replaced by a valid class), and a work tensor ``g`` (rows, K) in the
compute dtype. It returns the per-row loss (rows,) and leaves d loss_i / d s_i in ``g``.
All row-wise work happens in place on buffers of the chunk's size; nothing of size N x K
is allocated here.

Notation: m = max_k s_k, Z = sum_k exp(s_k - m), lse = m + log Z, p = softmax(s).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _row_dot(a: Tensor, b: Tensor) -> Tensor:
    """sum_k a_ik b_ik for each row, as a batched matrix product (no (rows, K) temporary)."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def _centered(s: Tensor, g: Tensor, scale: float = 1.0) -> Tensor:
    """Write g = (s - m) * scale and return m (rows, 1) in g's dtype."""
    m = s.amax(dim=1, keepdim=True).to(g.dtype)
    if scale == 1.0:
        torch.sub(s, m, out=g)
    else:
        torch.add(m * -scale, s, alpha=scale, out=g)
    return m


def _source_rows(s: Tensor, g: Tensor) -> Tensor:
    """``s`` itself when it has the compute dtype, else ``s`` copied (upcast) into ``g``."""
    return s if s.dtype == g.dtype else g.copy_(s)


def _softmax_log_z(src: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """Write g = softmax(src) (one fused row pass); return m and log Z = -log max_k p_k (rows,).

    max_k p_k = 1/Z >= 1/K never underflows; lse = m + log Z is kept as two terms so that
    lse - s_y = (m - s_y) + log Z does not cancel for large logits.
    """
    m, argmax = src.max(dim=1, keepdim=True)
    torch.ops.aten._softmax.out(src, 1, False, out=g)
    return m.view(-1), g.gather(1, argmax).log().neg().view(-1)


def ce_ls_chunk(
    s: Tensor, y: Tensor, g: Tensor, eps: float, prior_eps: Tensor | None, prior_sum: float
) -> Tensor:
    """Cross-entropy with label smoothing toward a prior u (uniform 1/K when None).

    loss = (1 - eps) (lse - s_y) + eps (sum(u) lse - u . s)
    grad = ((1 - eps) + eps sum(u)) p - (1 - eps) onehot_y - eps u
    ``prior_eps`` holds eps * u (K,); eps = 0 gives the hard cross-entropy.
    """
    k = s.shape[1]
    src = _source_rows(s, g)
    s_y = src.gather(1, y).view(-1)
    if eps > 0.0:  # u . s, taken before g is overwritten
        dot_u = src.sum(dim=1) / k if prior_eps is None else torch.mv(src, prior_eps) / eps
    m, log_z = _softmax_log_z(src, g)
    loss = (m - s_y) + log_z
    if eps > 0.0:
        loss = loss * (1.0 - eps) + eps * (prior_sum * log_z + (prior_sum * m - dot_u))
        p_scale = (1.0 - eps) + eps * prior_sum
        if p_scale != 1.0:
            g.mul_(p_scale)
        g.sub_(eps / k if prior_eps is None else prior_eps)
    g.scatter_add_(1, y, g.new_full(y.shape, -(1.0 - eps)))
    return loss


def reloop_chunk(s: Tensor, y: Tensor, g: Tensor, alpha: float, previous_y: Tensor) -> Tensor:
    """ReLoop self-correction: (1 - alpha) CE + alpha max(0, q_y - p_y).

    Where the hinge is active, d(-p_y)/ds = p_y (p - onehot_y), so the whole gradient is the
    cross-entropy gradient scaled per row: c (p - onehot_y), c = (1 - alpha) + alpha [q_y > p_y] p_y.
    """
    src = _source_rows(s, g)
    s_y = src.gather(1, y).view(-1)
    m, log_z = _softmax_log_z(src, g)
    ce = (m - s_y) + log_z
    p_y = g.gather(1, y).view(-1)
    gap = previous_y - p_y
    loss = (1.0 - alpha) * ce + alpha * gap.clamp_min(0.0)
    c = (1.0 - alpha) + alpha * (gap > 0).to(g.dtype) * p_y
    g.mul_(c.unsqueeze(1))
    g.scatter_add_(1, y, -c.unsqueeze(1))
    return loss


def kd_chunk(
    s: Tensor,
    y: Tensor | None,
    g: Tensor,
    t: Tensor,
    work_t: Tensor,
    work_d: Tensor,
    temperature: float,
    alpha: float,
) -> Tensor:
    """Hinton distillation: (1 - alpha) CE(s, y) + alpha T^2 KL(softmax(t/T) || softmax(s/T)).

    With a = (s - m_s)/T, b = (t - m_t)/T, Z_s = sum exp(a), Z_t = sum exp(b), q = exp(b)/Z_t:
    KL = sum_k q_k (b_k - a_k) - log Z_t + log Z_s
    grad = alpha T (softmax(s/T) - q) + (1 - alpha) (p - onehot_y)
    ``work_t`` and ``work_d`` are (rows, K) buffers; ``y`` may be None only when alpha = 1.
    """
    inv_t = 1.0 / temperature
    with_ce = alpha < 1.0
    m_s = _centered(s, g, inv_t)  # g = a
    _centered(t, work_t, inv_t)  # work_t = b
    torch.sub(work_t, g, out=work_d)  # b - a
    work_t.exp_()
    z_t = work_t.sum(dim=1, keepdim=True)
    dot = _row_dot(work_t, work_d) / z_t.view(-1)
    g.exp_()
    z_s = g.sum(dim=1, keepdim=True)
    log_z_s = z_s.log().view(-1)
    kl = dot - z_t.log().view(-1) + log_z_s
    loss = (alpha * temperature * temperature) * kl
    kd_scale = alpha * temperature
    if not with_ce:
        g.mul_(kd_scale / z_s)
        g.addcmul_(work_t, -kd_scale / z_t)
        return loss
    s_y = s.gather(1, y).view(-1).to(g.dtype) - m_s.view(-1)
    if temperature == 1.0:  # softmax(s/T) is p: fold both terms into one scale
        ce = log_z_s - s_y
        g.mul_((kd_scale + 1.0 - alpha) / z_s)
    else:
        g.mul_(kd_scale / z_s)
        _centered(s, work_d)
        work_d.exp_()
        z = work_d.sum(dim=1, keepdim=True)
        ce = z.log().view(-1) - s_y
        g.addcmul_(work_d, (1.0 - alpha) / z)
    g.addcmul_(work_t, -kd_scale / z_t)
    g.scatter_add_(1, y, g.new_full(y.shape, -(1.0 - alpha)))
    return loss + (1.0 - alpha) * ce
