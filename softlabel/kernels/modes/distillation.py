"""Mode ``kd``: knowledge distillation, (1 - alpha) CE + alpha T^2 D(p_t^T, p_s^T).

Hinton et al., 2015, with p^T = softmax(logits / T) and D any divergence of
``softlabel.kernels.divergences`` (forward KL by default). ``standardize`` z-scores both
logits per row first, (x - mean) / (std + 1e-7) (logit standardization, Sun et al.,
CVPR 2024). The teacher is dense logits (also a live head made chunk by chunk) or a top-k
reference ``TopKLogits``, compared on k + 1 buckets: the kept ids and one tail bucket.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from softlabel.kernels import divergences
from softlabel.kernels.checks import (
    check_alpha,
    check_beta,
    check_divergence,
    check_divergence_settings,
    check_flag,
    check_skew,
    check_temperature,
    check_topk_buckets,
)
from softlabel.kernels.modes.base import Mode
from softlabel.kernels.modes.smoothing import binary_cross_entropy, ce_ls_chunk, cross_entropy_rows
from softlabel.kernels.references import TopKLogits
from softlabel.kernels.rowmath import as_compute, centered, log_z, softmax_into, source_rows

#: Added to the per-row standard deviation before dividing by it (logit standardization).
STD_EPS = 1e-7


def kd_grad_scale(temperature: float, alpha: float) -> float:
    """Factor c between the gradient and what ``kd_chunk`` leaves in ``g`` (grad = c g).

    Folding c into backward's ``grad_output`` scaling saves one pass per chunk; c is the
    larger of the two weights, so every coefficient kd_chunk applies is at most 1.
    """
    if temperature == 1.0:
        return 1.0
    if alpha == 1.0:
        return temperature
    return max(alpha * temperature, 1.0 - alpha)


def kd_chunk(
    s: Tensor,
    y: Tensor | None,
    g: Tensor,
    t: Tensor,
    work_a: Tensor,
    work_b: Tensor,
    temperature: float,
    alpha: float,
    target_probs: Tensor | None = None,
) -> Tensor:
    """Forward KL: (1 - alpha) CE(s, y) + alpha T^2 KL(softmax(t/T) || softmax(s/T)).

    With a = (s - m_s)/T, b = (t - m_t)/T (centered, so nothing cancels), q = softmax(b),
    r = softmax(a) and log Z_x = log sum_k exp(x_k) = -log max_k softmax(x)_k:
    KL = q . (b - a) - log Z_b + log Z_a
    grad = alpha T (r - q) + (1 - alpha) (p - onehot_y), left in ``g`` divided by
    ``kd_grad_scale(T, alpha)``. Per chunk: fused softmax row passes for t/T, s/T and (when
    T != 1 and alpha < 1) s, six element-wise passes and a few row reductions.
    ``work_a`` and ``work_b`` are (rows, K) buffers; ``y`` may be None only when alpha = 1.
    With probability targets ``target_probs`` = c (rows, K) in place of y: CE = sum(c) lse - c . s
    and its gradient sum(c) p - c.
    """
    inv_t = 1.0 / temperature
    centered(t, work_a, inv_t)  # work_a = b
    q = softmax_into(work_a, work_b)
    m_s = centered(s, g, inv_t)  # g = a
    dot = work_a.sub_(g).mul_(q).sum(dim=1)  # q . (b - a)
    r = softmax_into(g, work_a)
    log_z_a = log_z(r)
    kl = dot - log_z(q) + log_z_a
    loss = (alpha * temperature * temperature) * kl
    if alpha == 1.0:  # grad = T (r - q)
        torch.sub(r, q, out=g)
        return loss
    if target_probs is None:
        c = None
        c_sum = 1.0
        s_y = s.gather(1, y).to(g.dtype).view(-1) - m_s.view(-1)
    else:
        c = as_compute(target_probs, g)
        c_sum = c.sum(dim=1)
        s_y = (c * s).sum(dim=1) - c_sum * m_s.view(-1)  # c . (s - m_s)
    if temperature == 1.0:  # r is p: grad = p - alpha q - (1 - alpha) onehot_y
        ce = c_sum * log_z_a - s_y
        torch.sub(r, q, alpha=alpha, out=g)
        if c is not None:  # p's coefficient is alpha + (1 - alpha) sum(c)
            g.addcmul_(r, ((1.0 - alpha) * (c_sum - 1.0)).unsqueeze(1))
        scale = 1.0
    else:
        p = softmax_into(s, g)
        ce = c_sum * log_z(p) - s_y
        if c is not None:
            p.mul_(c_sum.unsqueeze(1))
        kd_weight, ce_weight = alpha * temperature, 1.0 - alpha
        scale = kd_grad_scale(temperature, alpha)
        r.sub_(q)
        if kd_weight == scale:  # g = (r - q) + (ce_weight / kd_weight) p
            torch.add(r, p, alpha=ce_weight / kd_weight, out=g)
        else:  # g = p + (kd_weight / ce_weight) (r - q)
            g.add_(r, alpha=kd_weight / ce_weight)
    if c is None:
        g.scatter_add_(1, y, g.new_full(y.shape, -(1.0 - alpha) / scale))
    else:
        g.sub_(c, alpha=(1.0 - alpha) / scale)
    return loss + (1.0 - alpha) * ce


def _standardized_centered(x: Tensor, out: Tensor, inv_t: float) -> tuple[Tensor, Tensor]:
    """Write out = (z - max_k z_k) / T for z = (x - mean) / (std + 1e-7) (std with Bessel's
    correction), i.e. (x - max_k x_k) / (T (std + 1e-7)); return the row mean and std (rows,)
    in ``out``'s dtype."""
    src = x if x.dtype == out.dtype else out.copy_(x)
    std, mean = torch.std_mean(src, dim=1)
    scale = (std + STD_EPS).reciprocal_().mul_(inv_t)
    torch.sub(src, src.amax(dim=1, keepdim=True), out=out).mul_(scale.unsqueeze(1))
    return mean, std


def divergence_grad_scale(
    temperature: float, alpha: float, divergence: str, beta: float, skew: float, standardize: bool
) -> float:
    """Factor c between the gradient and what ``divergence_chunk`` leaves in ``g``: the
    larger of the soft term's weight alpha T factor and the CE's 1 - alpha (1 when
    standardizing, where the soft term's weight varies per row)."""
    if standardize or alpha == 0.0:
        return 1.0
    weight = alpha * temperature * divergences.factor(divergence, beta, skew)
    return max(weight, 1.0 - alpha)


def divergence_chunk(
    s: Tensor,
    y: Tensor | None,
    g: Tensor,
    t: Tensor,
    work_a: Tensor,
    work_b: Tensor,
    work_c: Tensor | None,
    temperature: float,
    alpha: float,
    divergence: str,
    beta: float,
    skew: float,
    standardize: bool,
    target_probs: Tensor | None = None,
) -> Tensor:
    """(1 - alpha) CE(s, y) + alpha T^2 D(p_t^T, p_s^T) for any divergence of
    ``divergences.terms``, with optional logit standardization (Sun et al., CVPR 2024).

    a = s / T and b = t / T, or with ``standardize`` a = z_s / T, b = z_t / T where
    z = (x - mean) / (std + 1e-7) per row (Bessel's correction); the CE stays on the raw s.
    Gradient: alpha T u + (1 - alpha) (p - onehot_y), u = dD/da, left in ``g`` divided by
    ``divergence_grad_scale``; with standardization the student's z-scoring is chained in:
    alpha T (u - kappa (u . z) z) / (std + 1e-7), kappa = (std + 1e-7) / ((K - 1) std) (0 for
    a constant row, where z = 0). ``work_c`` is needed by the JSD and the skew forward KL
    only. ``y`` may be None only when alpha = 1; ``target_probs`` c in place of y:
    CE = sum(c) lse - c . s, gradient sum(c) p - c.
    """
    k = s.shape[1]
    inv_t = 1.0 / temperature
    if standardize:
        _standardized_centered(t, work_a, inv_t)
        mean_s, std_s = _standardized_centered(s, g, inv_t)
    else:
        centered(t, work_a, inv_t)
        centered(s, g, inv_t)
    d = divergences.terms(g, work_a, work_b, work_c, divergence, beta, skew)
    loss = (alpha * temperature * temperature) * d
    coef = alpha * temperature * divergences.factor(divergence, beta, skew)
    if standardize:
        inv_std = (std_s + STD_EPS).reciprocal_()
        z = torch.sub(s, mean_s.unsqueeze(1), out=work_a).mul_(inv_std.unsqueeze(1))
        kappa = torch.where(std_s > 0, 1.0 / ((k - 1) * std_s * inv_std), 0.0)
        u_dot_z = torch.mul(g, z, out=work_b).sum(dim=1)
        g.addcmul_(z, (-kappa * u_dot_z).unsqueeze(1))
        g.mul_((coef * inv_std).unsqueeze(1))
        scale = 1.0
    else:  # the constant scale is folded into backward (``divergence_grad_scale``)
        scale = max(coef, 1.0 - alpha)
        if coef != scale:
            g.mul_(coef / scale)
    if alpha == 1.0:
        return loss
    p = softmax_into(s, work_a)
    ce_scale = 1.0 - alpha
    ce_grad = ce_scale / scale
    m_s = s.amax(dim=1).to(g.dtype)
    if target_probs is None:
        c_sum = 1.0
        s_y = s.gather(1, y).to(g.dtype).view(-1) - m_s
        g.add_(p, alpha=ce_grad)
        g.scatter_add_(1, y, g.new_full(y.shape, -ce_grad))
    else:
        c = as_compute(target_probs, g)
        c_sum = c.sum(dim=1)
        s_y = work_b.copy_(s).mul_(c).sum(dim=1) - c_sum * m_s  # c . (s - m_s)
        g.addcmul_(p, (ce_grad * c_sum).unsqueeze(1))
        g.sub_(c, alpha=ce_grad)
    ce = c_sum * log_z(p) - s_y
    return loss + ce_scale * ce


def bucket_divergence(
    student: Tensor, teacher: Tensor, temperature: float, divergence: str, beta: float, skew: float
) -> tuple[Tensor, Tensor]:
    """D(q^T, p^T) (rows,) of the bucket logits ``student`` and ``teacher`` (rows, k + 1) and
    dD/d``student``, from the differentiable formula (``divergences.reference``) on these few
    columns: exact where a teacher bucket has probability 0 (0 log 0 = 0; the JSD's and the
    skew KLs' mixtures there are the student's share alone)."""
    with torch.enable_grad():
        u = student.detach().requires_grad_()
        log_p = torch.log_softmax(u / temperature, dim=1)
        log_q = torch.log_softmax(teacher / temperature, dim=1)
        d = divergences.reference(log_q, log_p, divergence, beta, skew)
        (grad,) = torch.autograd.grad(d.sum(), u)
    return d.detach(), grad


def topk_chunk(
    s: Tensor,
    y: Tensor | None,
    g: Tensor,
    teacher: TopKLogits,
    temperature: float,
    alpha: float,
    divergence: str,
    beta: float,
    skew: float,
    target_probs: Tensor | None = None,
) -> Tensor:
    """(1 - alpha) CE(s, y) + alpha T^2 D(q^T, p^T) on the k + 1 buckets of a top-k teacher.

    Student bucket logits u = [s at the k kept ids, L = logsumexp of s over the other ids],
    teacher bucket logits [logprob, tail]; p^T = softmax(u / T), q^T likewise, and D any
    divergence of ``divergences``. L comes from a masked log-sum-exp
    (the kept logits set to -inf), never log(1 - sum p). The CE uses the full vocabulary,
    lse = logaddexp(L, logsumexp(kept)). With the rest distribution rho (the softmax of s
    over the other ids, 0 at the kept ones), dL/ds = rho, so the gradient is

        at the other ids:  rho (alpha T^2 u_L + (1 - alpha) sum(c) e^(L - lse))
        at the kept ids:   alpha T^2 u_j + (1 - alpha) sum(c) p_j
        minus (1 - alpha) onehot_y (or (1 - alpha) c),

    with u = dD/d(bucket logits) (``bucket_divergence``). ``g`` may hold the logits themselves (the linear head makes them there):
    everything read from the logits is read before ``g`` is written.
    """
    index, logprob, tail = teacher
    k = index.shape[1]
    src = source_rows(s, g)
    kept = src.gather(1, index)
    if alpha < 1.0:
        if target_probs is None:
            c_sum = 1.0
            s_y = src.gather(1, y).view(-1)
        else:
            c = as_compute(target_probs, g)
            c_sum = c.sum(dim=1)
            s_y = torch.linalg.vecdot(src, c)
    if src is not g:
        g.copy_(src)
    g.scatter_(1, index, float("-inf"))
    m_rest = g.amax(dim=1)
    torch.ops.aten._softmax.out(g, 1, False, out=g)  # rho, 0 at the kept ids
    rest = m_rest + log_z(g)
    student = torch.cat([kept, rest.unsqueeze(1)], dim=1)
    buckets = torch.cat([logprob, tail.unsqueeze(1)], dim=1).to(g.dtype)
    d, u = bucket_divergence(student, buckets, temperature, divergence, beta, skew)
    coef = alpha * temperature * temperature
    loss = coef * d
    at_kept = u[:, :k].mul_(coef)
    at_rest = u[:, k].mul_(coef)
    if alpha < 1.0:  # the CE's p = softmax(s): e^(L - lse) rho at the other ids
        lse = torch.logaddexp(rest, torch.logsumexp(kept, dim=1))
        loss = loss + (1.0 - alpha) * (c_sum * lse - s_y)
        weight = (1.0 - alpha) * c_sum
        at_rest = at_rest + weight * torch.exp(rest - lse)
        if isinstance(weight, Tensor):
            weight = weight.unsqueeze(1)
        at_kept = at_kept + weight * torch.exp(kept - lse.unsqueeze(1))
    g.mul_(at_rest.unsqueeze(1))
    g.scatter_(1, index, at_kept)
    if alpha < 1.0:
        if target_probs is None:
            g.scatter_add_(1, y, g.new_full(y.shape, -(1.0 - alpha)))
        else:
            g.sub_(c, alpha=1.0 - alpha)
    return loss


def topk_reference(
    s: Tensor,
    labels: Tensor | None,
    soft_target: Tensor | None,
    teacher: TopKLogits,
    temperature: float,
    alpha: float,
    divergence: str,
    beta: float,
    skew: float,
) -> Tensor:
    """``topk_chunk``'s loss as a differentiable formula (N,) on logits ``s`` (N, V)."""
    index, logprob, tail = teacher
    kept = s.gather(-1, index)
    rest = torch.logsumexp(s.scatter(-1, index, -math.inf), dim=-1)
    student = torch.cat([kept, rest.unsqueeze(-1)], dim=-1)
    buckets = torch.cat([logprob.to(s.dtype), tail.to(s.dtype).unsqueeze(-1)], dim=-1)
    log_q = torch.log_softmax(buckets / temperature, dim=-1)
    log_p = torch.log_softmax(student / temperature, dim=-1)
    soft = temperature * temperature * divergences.reference(log_q, log_p, divergence, beta, skew)
    if alpha == 1.0:
        return soft
    log_softmax = torch.log_softmax(s, dim=-1)
    return (1.0 - alpha) * cross_entropy_rows(log_softmax, labels, soft_target) + alpha * soft


def _standardized(x: Tensor) -> Tensor:
    """(x - mean) / (std + 1e-7) per row, std with Bessel's correction."""
    return (x - x.mean(dim=1, keepdim=True)) / (x.std(dim=1, keepdim=True) + STD_EPS)


class Distillation(Mode):
    """``kd``: params ``temperature``, ``alpha``, ``divergence``, ``beta`` (JSD), ``skew``
    (skew divergences), ``standardize``; a dense teacher, a live head or a top-k reference."""

    name = "kd"
    defaults = {
        "temperature": 4.0,
        "alpha": 0.9,
        "divergence": "forward_kl",
        "beta": 0.5,
        "skew": 0.1,
        "standardize": False,
    }
    checks = {
        "temperature": check_temperature,
        "alpha": check_alpha,
        "divergence": check_divergence,
        "beta": check_beta,
        "skew": check_skew,
        "standardize": partial(check_flag, "standardize"),
    }
    teacher = frozenset({"logits", "head", "topk"})
    has_binary = True

    def settings(self, params) -> dict:
        settings = super().settings(params)
        check_divergence_settings(settings["divergence"], settings["beta"], settings["skew"])
        return settings

    @staticmethod
    def _divergence(spec) -> str:
        return divergences.effective(spec.divergence, spec.beta, spec.skew)

    def _plain(self, spec) -> bool:
        """True when the forward-KL kernel ``kd_chunk`` runs (no standardization)."""
        return self._divergence(spec) == "forward_kl" and not spec.standardize

    def needs_labels(self, spec) -> bool:
        return spec.alpha < 1.0

    def work_buffers(self, spec) -> int:
        if isinstance(spec.teacher, TopKLogits):
            return 0
        return 2 + (spec.alpha > 0.0 and divergences.work_buffers(self._divergence(spec)))

    def grad_scale(self, spec) -> float:
        if spec.alpha == 0.0 or isinstance(spec.teacher, TopKLogits):
            return 1.0
        if self._plain(spec):
            return kd_grad_scale(spec.temperature, spec.alpha)
        return divergence_grad_scale(
            spec.temperature, spec.alpha, spec.divergence, spec.beta, spec.skew, spec.standardize
        )

    def logits_in_grad(self, spec) -> bool:
        return isinstance(spec.teacher, TopKLogits) or spec.alpha == 0.0

    def check(self, spec, mask, num_classes) -> None:
        if not isinstance(spec.teacher, TopKLogits):
            return
        if spec.standardize:
            raise ValueError(
                "standardize=True needs the teacher's logits over every class (it z-scores "
                "them), but the reference is a top-k TopKLogits (k ids plus a tail); use "
                "standardize=False, or a dense cache / live teacher (teacher.tail=uniform "
                "gives dense logits rebuilt from a top-k cache)"
            )
        index, logprob, tail = spec.teacher
        buckets = torch.cat([logprob, tail.unsqueeze(-1)], dim=-1)
        strict = divergences.strict_support(spec.divergence, spec.beta, spec.skew)
        check_topk_buckets(buckets, mask, "'reverse_kl'" if strict else None)

    def chunk(self, s, y, q, g, t, prev, work, spec, state) -> Tensor:
        rows = s.shape[0]
        if spec.alpha == 0.0:
            return ce_ls_chunk(s, y, g, 0.0, None, 1.0, q)
        if isinstance(t, TopKLogits):
            return topk_chunk(
                s, y, g, t, spec.temperature, spec.alpha, spec.divergence, spec.beta, spec.skew, q
            )
        if self._plain(spec):
            return kd_chunk(
                s, y, g, t, work[0][:rows], work[1][:rows], spec.temperature, spec.alpha, q
            )
        return divergence_chunk(
            s,
            y,
            g,
            t,
            work[0][:rows],
            work[1][:rows],
            work[2][:rows] if len(work) > 2 else None,
            spec.temperature,
            spec.alpha,
            spec.divergence,
            spec.beta,
            spec.skew,
            spec.standardize,
            q,
        )

    def reference(self, s, labels, spec, teacher=None) -> Tensor:
        t = spec.temperature
        if isinstance(teacher, TopKLogits):
            return topk_reference(
                s,
                labels,
                spec.soft_target,
                teacher,
                t,
                spec.alpha,
                spec.divergence,
                spec.beta,
                spec.skew,
            )
        student, teacher = s, teacher.to(s.dtype)
        if spec.standardize:
            student, teacher = _standardized(student), _standardized(teacher)
        log_q = F.log_softmax(teacher / t, dim=1)
        log_r = F.log_softmax(student / t, dim=1)
        d = divergences.reference(log_q, log_r, spec.divergence, spec.beta, spec.skew)
        loss = (spec.alpha * t * t) * d
        if spec.alpha < 1.0:
            hard = cross_entropy_rows(F.log_softmax(s, dim=1), labels, spec.soft_target)
            loss = loss + (1.0 - spec.alpha) * hard
        return loss

    def binary(self, logits, target, spec, reference) -> Tensor:
        """The Bernoulli form: D between sigmoid(t/T) and sigmoid(s/T) as two buckets."""
        if spec.standardize:
            raise ValueError(
                "standardize=True needs multiclass logits (..., K): a binary task has one "
                "logit per position, which has no per-position mean and std to standardize with"
            )
        t = spec.temperature
        log_q = divergences.bernoulli_log_probs(reference / t)
        log_p = divergences.bernoulli_log_probs(logits / t)
        soft = (t * t) * divergences.reference(log_q, log_p, spec.divergence, spec.beta, spec.skew)
        if spec.alpha == 1.0:
            return soft
        return (1 - spec.alpha) * binary_cross_entropy(logits, target) + spec.alpha * soft
