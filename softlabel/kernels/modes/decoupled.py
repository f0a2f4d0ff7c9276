"""Mode ``dkd``: decoupled knowledge distillation (Zhao et al., CVPR 2022).

ce_weight CE + T^2 (alpha TCKD + beta NCKD): TCKD = KL(b_t || b_s) of the binary
(target, rest) masses of p_t^T and p_s^T, NCKD = KL of p_t^T and p_s^T renormalised over the
non-target classes (the target class excluded exactly; mdistiller subtracts 1000 from its
logit). Needs class indices and the teacher's logits over every class.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from softlabel.kernels.checks import check_loss_weight, check_temperature
from softlabel.kernels.modes.base import Mode
from softlabel.kernels.modes.smoothing import cross_entropy_rows
from softlabel.kernels.rowmath import centered, log_z, softmax_into


def _masked_log_z(x: Tensor, y: Tensor, out: Tensor) -> Tensor:
    """log sum_{k != y} exp(x_k) (rows,), with out = softmax of x over the classes k != y
    (0 at y). ``x`` is left as it was."""
    x_y = x.gather(1, y)
    x.scatter_(1, y, float("-inf"))
    m = x.amax(dim=1)
    softmax_into(x, out)
    x.scatter_(1, y, x_y)
    return m + log_z(out)


def dkd_chunk(
    s: Tensor,
    y: Tensor,
    g: Tensor,
    t: Tensor,
    work_a: Tensor,
    work_b: Tensor,
    temperature: float,
    tckd_weight: float,
    nckd_weight: float,
    ce_weight: float,
) -> Tensor:
    """With a = s/T, b = t/T (centered), r = softmax(a), q = softmax(b), hats for the softmax
    over the non-target classes k != y and L_x = log sum_k exp(x_k), L'_x = log sum_{k!=y}:
    TCKD = KL((q_y, 1 - q_y) || (r_y, 1 - r_y)), log q_y = b_y - L_b, log(1 - q_y) = L'_b - L_b;
    NCKD = KL(q^ || r^) = q^ . (b - a) - L'_b + L'_a (the target class excluded exactly).
    Gradient: T [(beta - alpha d) r^ - beta q^ + alpha d onehot_y] + ce_weight (p - onehot_y),
    d = r_y - q_y (alpha = ``tckd_weight``, beta = ``nckd_weight``).
    """
    inv_t = 1.0 / temperature
    centered(t, work_a, inv_t)  # work_a = b
    b_y = work_a.gather(1, y).view(-1)
    log_z_b_rest = _masked_log_z(work_a, y, work_b)  # work_b = q^
    m_s = centered(s, g, inv_t)  # g = a
    a_y = g.gather(1, y).view(-1)
    dot = work_a.sub_(g).mul_(work_b).sum(dim=1)  # q^ . (b - a), 0 at y
    log_z_a_rest = _masked_log_z(g, y, work_a)  # work_a = r^
    log_z_b = torch.logaddexp(b_y, log_z_b_rest)
    log_z_a = torch.logaddexp(a_y, log_z_a_rest)
    log_q_y, log_q_rest = b_y - log_z_b, log_z_b_rest - log_z_b
    log_r_y, log_r_rest = a_y - log_z_a, log_z_a_rest - log_z_a
    tckd = log_q_y.exp() * (log_q_y - log_r_y) + log_q_rest.exp() * (log_q_rest - log_r_rest)
    nckd = dot - log_z_b_rest + log_z_a_rest
    loss = (temperature * temperature) * (tckd_weight * tckd + nckd_weight * nckd)
    d = log_r_y.exp() - log_q_y.exp()
    at_y = (temperature * tckd_weight) * d
    coef_r = temperature * nckd_weight - at_y
    if ce_weight > 0.0:
        p = softmax_into(s, g)
        ce = log_z(p) - (s.gather(1, y).to(g.dtype).view(-1) - m_s.view(-1))
        loss = loss + ce_weight * ce
        if ce_weight != 1.0:
            g.mul_(ce_weight)
        g.addcmul_(work_a, coef_r.unsqueeze(1))
    else:
        torch.mul(work_a, coef_r.unsqueeze(1), out=g)
    g.sub_(work_b, alpha=temperature * nckd_weight)
    g.scatter_add_(1, y, (at_y - ce_weight).unsqueeze(1))
    return loss


def _kl_terms(log_a: Tensor, log_b: Tensor) -> Tensor:
    """a (log a - log b) element-wise from log-probabilities (0 where a = 0)."""
    a = log_a.exp()
    return torch.where(a > 0, a * (log_a - log_b), torch.zeros_like(a))


class Decoupled(Mode):
    """``dkd``: params ``temperature``, ``tckd_weight`` (alpha), ``nckd_weight`` (beta),
    ``ce_weight``; a dense teacher or a live head."""

    name = "dkd"
    defaults = {"temperature": 4.0, "tckd_weight": 1.0, "nckd_weight": 8.0, "ce_weight": 1.0}
    checks = {
        "temperature": check_temperature,
        **{name: partial(check_loss_weight, name) for name in ("tckd_weight", "nckd_weight")},
        "ce_weight": partial(check_loss_weight, "ce_weight"),
    }
    teacher = frozenset({"logits", "head"})
    soft_target = False
    no_binary = (
        "with one logit per position the non-target part is a single class, so NCKD is 0 and "
        "TCKD is plain KD's Bernoulli KL; use distillation_loss(binary=True)"
    )

    def work_buffers(self, spec) -> int:
        return 2

    def chunk(self, s, y, q, g, t, prev, work, spec, state) -> Tensor:
        rows = s.shape[0]
        return dkd_chunk(
            s,
            y,
            g,
            t,
            work[0][:rows],
            work[1][:rows],
            spec.temperature,
            spec.tckd_weight,
            spec.nckd_weight,
            spec.ce_weight,
        )

    def reference(self, s, labels, spec, teacher=None) -> Tensor:
        t = spec.temperature
        log_r = F.log_softmax(s / t, dim=1)
        log_q = F.log_softmax(teacher.to(s.dtype) / t, dim=1)
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
        hard = cross_entropy_rows(torch.log_softmax(s, dim=1), labels, None)
        return soft + spec.ce_weight * hard
