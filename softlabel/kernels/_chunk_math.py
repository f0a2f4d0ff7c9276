"""Per-chunk math of the fused soft-target loss.

Every function takes a chunk of logit rows ``s`` (rows, K), the labels ``y`` (rows, 1)
(ignored rows already replaced by a valid class) or a chunk of probability targets ``q``
(rows, K) in their place (the one-hot of y generalised: every ``s_y`` becomes ``q . s`` and
every ``onehot_y`` becomes ``q``), and a work tensor ``g`` (rows, K) in the compute dtype. It returns the per-row loss (rows,) and leaves d loss_i / d s_i in ``g``
(for KD divided by the constant ``kd_grad_scale``, which backward multiplies back in).
All row-wise work happens in place on buffers of the chunk's size; nothing of size N x K
is allocated here.

Notation: m = max_k s_k, Z = sum_k exp(s_k - m), lse = m + log Z, p = softmax(s).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _source_rows(s: Tensor, g: Tensor) -> Tensor:
    """``s`` itself when it has the compute dtype, else ``s`` copied (upcast) into ``g``."""
    return s if s.dtype == g.dtype else g.copy_(s)


def _log_z(probs: Tensor) -> Tensor:
    """log Z = -log max_k p_k (rows,) for probs = softmax(x) = exp(x - m) / Z.

    The largest probability is exp(m - m) / Z = 1/Z >= 1/K, so it never underflows. ``amax``
    (no index) is used: on CPU it is about five times faster than ``max``/``argmax``.
    """
    return probs.amax(dim=1).log().neg()


def _softmax_log_z(src: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """Write g = softmax(src) (one fused row pass); return m and log Z = -log max_k p_k (rows,).

    lse = m + log Z is kept as two terms so that lse - s_y = (m - s_y) + log Z does not
    cancel for large logits.
    """
    m = src.amax(dim=1)
    torch.ops.aten._softmax.out(src, 1, False, out=g)
    return m, _log_z(g)


def _as_compute(q: Tensor, like: Tensor) -> Tensor:
    """A probability-target chunk in the compute dtype of ``like``."""
    return q if q.dtype == like.dtype else q.to(like.dtype)


def ce_ls_chunk(
    s: Tensor,
    y: Tensor | None,
    g: Tensor,
    eps: float,
    prior_eps: Tensor | None,
    prior_sum: float,
    q: Tensor | None = None,
) -> Tensor:
    """Cross-entropy with label smoothing toward a prior u (uniform 1/K when None).

    loss = (1 - eps) (lse - s_y) + eps (sum(u) lse - u . s)
    grad = ((1 - eps) + eps sum(u)) p - (1 - eps) onehot_y - eps u
    ``prior_eps`` holds eps * u (K,); eps = 0 gives the hard cross-entropy. With a probability
    target q: s_y -> q . s, onehot_y -> q and the first term's lse -> sum(q) lse.
    """
    k = s.shape[1]
    src = _source_rows(s, g)
    if q is None:
        s_y = src.gather(1, y).view(-1)
        q_sum = 1.0
    else:
        q = _as_compute(q, g)
        s_y = torch.linalg.vecdot(src, q)
        q_sum = q.sum(dim=1)
    if eps > 0.0:  # u . s, taken before g is overwritten
        dot_u = src.sum(dim=1) / k if prior_eps is None else torch.mv(src, prior_eps) / eps
    m, log_z = _softmax_log_z(src, g)
    loss = (q_sum * m - s_y) + q_sum * log_z
    p_scale = (1.0 - eps) * q_sum + eps * prior_sum
    if eps > 0.0:
        loss = loss * (1.0 - eps) + eps * (prior_sum * log_z + (prior_sum * m - dot_u))
    if isinstance(p_scale, Tensor):
        g.mul_(p_scale.unsqueeze(1))
    elif p_scale != 1.0:
        g.mul_(p_scale)
    if eps > 0.0:
        g.sub_(eps / k if prior_eps is None else prior_eps)
    if q is None:
        g.scatter_add_(1, y, g.new_full(y.shape, -(1.0 - eps)))
    else:
        g.sub_(q, alpha=1.0 - eps)
    return loss


def ce_prior_matrix_chunk(
    s: Tensor,
    y: Tensor | None,
    g: Tensor,
    eps: float,
    prior_matrix: Tensor,
    work: Tensor,
    q: Tensor | None = None,
) -> Tensor:
    """Label smoothing toward a class-conditional prior: row y of a (K, K) matrix M.

    loss = (1 - eps) (lse - s_y) + eps (sum(u) lse - u . s), u = M[y]
    grad = ((1 - eps) + eps sum(u)) p - (1 - eps) onehot_y - eps u
    ``prior_matrix`` is M in the compute dtype; ``work`` (rows, K) receives u. With a
    probability target c: u = c M, s_y -> c . s, onehot_y -> c, the first lse -> sum(c) lse.
    """
    src = _source_rows(s, g)
    if q is None:
        torch.index_select(prior_matrix, 0, y.view(-1), out=work)  # M[y]
        s_y = src.gather(1, y).view(-1)
        q_sum = 1.0
    else:
        q = _as_compute(q, g)
        torch.mm(q, prior_matrix, out=work)  # c M
        s_y = torch.linalg.vecdot(src, q)
        q_sum = q.sum(dim=1)
    u_sum = work.sum(dim=1)
    m, log_z = _softmax_log_z(src, g)
    hard = (q_sum * m - s_y) + q_sum * log_z
    g.mul_(((1.0 - eps) * q_sum + eps * u_sum).unsqueeze(1))
    g.sub_(work, alpha=eps)
    if q is None:
        g.scatter_add_(1, y, g.new_full(y.shape, -(1.0 - eps)))
    else:
        g.sub_(q, alpha=1.0 - eps)
    dot_u = work.mul_(s).sum(dim=1)  # u . s, in place: u is no longer needed
    smooth = (u_sum * m - dot_u) + u_sum * log_z
    return (1.0 - eps) * hard + eps * smooth


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


def reloop_soft_target_chunk(
    s: Tensor, q: Tensor, g: Tensor, alpha: float, previous: Tensor
) -> Tensor:
    """ReLoop against a probability target q: (1 - alpha) H(q, p) + alpha sum_k q_k max(0,
    prev_k - p_k), which is the paper's max(0, prev_y - p_y) when q is one-hot.

    With h = q * [prev > p] * p: grad = ((1 - alpha) sum(q) + alpha sum(h)) p - (1 - alpha) q
    - alpha h.
    """
    src = _source_rows(s, g)
    q = _as_compute(q, g)
    q_sum = q.sum(dim=1)
    s_q = torch.linalg.vecdot(src, q)
    m, log_z = _softmax_log_z(src, g)
    ce = (q_sum * m - s_q) + q_sum * log_z
    gap = _as_compute(previous, g) - g
    hinge = torch.linalg.vecdot(q, gap.clamp_min(0.0))
    h = gap.gt_(0).to(g.dtype).mul_(q).mul_(g)
    c = (1.0 - alpha) * q_sum + alpha * h.sum(dim=1)
    g.mul_(c.unsqueeze(1)).sub_(q, alpha=1.0 - alpha).sub_(h, alpha=alpha)
    return (1.0 - alpha) * ce + alpha * hinge


def _softmax_into(x: Tensor, out: Tensor) -> Tensor:
    """out = softmax(x) over rows in one fused pass (half inputs are upcast first)."""
    if x.dtype == out.dtype:
        return torch.ops.aten._softmax.out(x, 1, False, out=out)
    return out.copy_(torch.softmax(x, dim=1, dtype=out.dtype))


def _centered(x: Tensor, out: Tensor, scale: float) -> Tensor:
    """Write out = (x - m) * scale in one pass; return m = max_k x_k (rows, 1)."""
    m = x.amax(dim=1, keepdim=True).to(out.dtype)
    if scale == 1.0:
        torch.sub(x, m, out=out)
    else:
        torch.add(m * -scale, x, alpha=scale, out=out)
    return m


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
    """Hinton distillation: (1 - alpha) CE(s, y) + alpha T^2 KL(softmax(t/T) || softmax(s/T)).

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
    _centered(t, work_a, inv_t)  # work_a = b
    q = _softmax_into(work_a, work_b)
    m_s = _centered(s, g, inv_t)  # g = a
    dot = work_a.sub_(g).mul_(q).sum(dim=1)  # q . (b - a)
    r = _softmax_into(g, work_a)
    log_z_a = _log_z(r)
    kl = dot - _log_z(q) + log_z_a
    loss = (alpha * temperature * temperature) * kl
    if alpha == 1.0:  # grad = T (r - q)
        torch.sub(r, q, out=g)
        return loss
    if target_probs is None:
        c = None
        c_sum = 1.0
        s_y = s.gather(1, y).to(g.dtype).view(-1) - m_s.view(-1)
    else:
        c = _as_compute(target_probs, g)
        c_sum = c.sum(dim=1)
        s_y = (c * s).sum(dim=1) - c_sum * m_s.view(-1)  # c . (s - m_s)
    if temperature == 1.0:  # r is p: grad = p - alpha q - (1 - alpha) onehot_y
        ce = c_sum * log_z_a - s_y
        torch.sub(r, q, alpha=alpha, out=g)
        if c is not None:  # p's coefficient is alpha + (1 - alpha) sum(c)
            g.addcmul_(r, ((1.0 - alpha) * (c_sum - 1.0)).unsqueeze(1))
        scale = 1.0
    else:
        p = _softmax_into(s, g)
        ce = c_sum * _log_z(p) - s_y
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


#: Added to the per-row standard deviation before dividing by it (logit standardization).
STD_EPS = 1e-7


def _standardized_centered(x: Tensor, out: Tensor, inv_t: float) -> tuple[Tensor, Tensor]:
    """Write out = (z - max_k z_k) / T for z = (x - mean) / (std + 1e-7) (std with Bessel's
    correction), i.e. (x - max_k x_k) / (T (std + 1e-7)); return the row mean and std (rows,)
    in ``out``'s dtype."""
    src = x if x.dtype == out.dtype else out.copy_(x)
    std, mean = torch.std_mean(src, dim=1)
    scale = (std + STD_EPS).reciprocal_().mul_(inv_t)
    torch.sub(src, src.amax(dim=1, keepdim=True), out=out).mul_(scale.unsqueeze(1))
    return mean, std


def _divergence_terms(
    g: Tensor, a_buf: Tensor, b_buf: Tensor, c_buf: Tensor | None, divergence: str, beta: float
) -> tuple[Tensor, float]:
    """D (rows,) and u = dD/da left in ``g`` as ``g * factor`` (the float returned).

    On entry g = a (student logits / T) and a_buf = b (teacher logits / T), both centered by
    their row maxima; r = softmax(a) = p_s^T, q = softmax(b) = p_t^T, log Z_x = log sum exp(x).
    On exit a_buf and b_buf (and c_buf) are free. With w = log r - log q (finite: from the
    centered logits, never log 0):

    - forward_kl: D = q . (b - a) - log Z_b + log Z_a, u = r - q.
    - reverse_kl: D = r . w, u = r (w - D).
    - jsd: M = beta q + (1 - beta) r; with d = log r - log q, log M - log q =
      logaddexp(log(1 - beta) + d, log beta) and v = log r - log M = d - (log M - log q):
      D = -beta q . (log M - log q) + (1 - beta) r . v, u = (1 - beta) r (v - r . v).
    - tvd: D = 1/2 sum |r - q|, u = r (h - r . h) / 2 with h = sign(r - q).
    """
    q = _softmax_into(a_buf, b_buf)  # b_buf = q
    log_z_b = _log_z(q) if divergence != "tvd" else None
    if divergence == "forward_kl":
        dot = a_buf.sub_(g).mul_(q).sum(dim=1)  # q . (b - a)
        r = _softmax_into(g, a_buf)
        d = dot - log_z_b + _log_z(r)
        torch.sub(r, q, out=g)
        return d, 1.0
    if divergence == "tvd":
        r = _softmax_into(g, a_buf)
        torch.sub(r, q, out=g)
        d = 0.5 * torch.linalg.vector_norm(g, ord=1, dim=1)
        g.sign_()
        r_dot_h = torch.mul(r, g, out=b_buf).sum(dim=1)  # q is no longer needed
        g.sub_(r_dot_h.unsqueeze(1)).mul_(r)
        return d, 0.5
    if divergence == "reverse_kl":
        r = _softmax_into(g, b_buf)  # q is no longer needed
        w = torch.sub(g, a_buf, out=a_buf).add_((log_z_b - _log_z(r)).unsqueeze(1))
        d = torch.mul(r, w, out=g).sum(dim=1)  # a is no longer needed
        torch.sub(w, d.unsqueeze(1), out=g).mul_(r)
        return d, 1.0
    # jsd, 0 < beta < 1
    r = _softmax_into(g, c_buf)
    dlog = torch.sub(g, a_buf, out=a_buf).add_((log_z_b - _log_z(r)).unsqueeze(1))
    torch.add(dlog, math.log1p(-beta), out=g)
    torch.logaddexp(g, g.new_tensor(math.log(beta)), out=g)  # g = log M - log q
    v = dlog.sub_(g)  # log r - log M
    teacher_kl = q.mul_(g).sum(dim=1).neg_()  # q . (log q - log M); q is no longer needed
    student_kl = torch.mul(r, v, out=b_buf).sum(dim=1)
    torch.sub(v, student_kl.unsqueeze(1), out=g).mul_(r)
    return beta * teacher_kl + (1.0 - beta) * student_kl, 1.0 - beta


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
    standardize: bool,
    target_probs: Tensor | None = None,
) -> Tensor:
    """(1 - alpha) CE(s, y) + alpha T^2 D(p_t^T, p_s^T) for any divergence of
    ``_divergence_terms``, with optional logit standardization (Sun et al., CVPR 2024).

    a = s / T and b = t / T, or with ``standardize`` a = z_s / T, b = z_t / T where
    z = (x - mean) / (std + 1e-7) per row (Bessel's correction); the CE stays on the raw s.
    Gradient: alpha T u + (1 - alpha) (p - onehot_y), u = dD/da, left in ``g`` divided by
    ``divergence_grad_scale``; with standardization the student's z-scoring is chained in:
    alpha T (u - kappa (u . z) z) / (std + 1e-7), kappa = (std + 1e-7) / ((K - 1) std) (0 for
    a constant row, where z = 0). ``work_c`` is
    needed by the JSD only. ``y`` may be None only when alpha = 1; ``target_probs`` c in
    place of y: CE = sum(c) lse - c . s, gradient sum(c) p - c.
    """
    k = s.shape[1]
    inv_t = 1.0 / temperature
    if standardize:
        _standardized_centered(t, work_a, inv_t)
        mean_s, std_s = _standardized_centered(s, g, inv_t)
    else:
        _centered(t, work_a, inv_t)
        _centered(s, g, inv_t)
    d, factor = _divergence_terms(g, work_a, work_b, work_c, divergence, beta)
    loss = (alpha * temperature * temperature) * d
    coef = alpha * temperature * factor
    if standardize:
        inv_std = (std_s + STD_EPS).reciprocal_()
        z = _standardized_again(s, mean_s, inv_std, work_a)
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
    p = _softmax_into(s, work_a)
    ce_scale = 1.0 - alpha
    ce_grad = ce_scale / scale
    m_s = s.amax(dim=1).to(g.dtype)
    if target_probs is None:
        c_sum = 1.0
        s_y = s.gather(1, y).to(g.dtype).view(-1) - m_s
        g.add_(p, alpha=ce_grad)
        g.scatter_add_(1, y, g.new_full(y.shape, -ce_grad))
    else:
        c = _as_compute(target_probs, g)
        c_sum = c.sum(dim=1)
        s_y = work_b.copy_(s).mul_(c).sum(dim=1) - c_sum * m_s  # c . (s - m_s)
        g.addcmul_(p, (ce_grad * c_sum).unsqueeze(1))
        g.sub_(c, alpha=ce_grad)
    ce = c_sum * _log_z(p) - s_y
    return loss + ce_scale * ce


def _divergence_factor(divergence: str, beta: float) -> float:
    """The factor of u = dD/da that ``_divergence_terms`` leaves out of ``g``."""
    if divergence == "tvd":
        return 0.5
    return 1.0 - beta if divergence == "jsd" else 1.0


def divergence_grad_scale(
    temperature: float, alpha: float, divergence: str, beta: float, standardize: bool
) -> float:
    """Factor c between the gradient and what ``divergence_chunk`` leaves in ``g``: the
    larger of the soft term's weight alpha T factor and the CE's 1 - alpha (1 when
    standardizing, where the soft term's weight varies per row)."""
    if standardize or alpha == 0.0:
        return 1.0
    return max(alpha * temperature * _divergence_factor(divergence, beta), 1.0 - alpha)


def _standardized_again(s: Tensor, mean: Tensor, inv_std: Tensor, out: Tensor) -> Tensor:
    """out = z = (s - mean) * inv_std in the compute dtype of ``out``."""
    torch.sub(s, mean.unsqueeze(1), out=out)
    return out.mul_(inv_std.unsqueeze(1))


def _masked_log_z(x: Tensor, y: Tensor, out: Tensor) -> Tensor:
    """log sum_{k != y} exp(x_k) (rows,), with out = softmax of x over the classes k != y
    (0 at y). ``x`` is left as it was."""
    x_y = x.gather(1, y)
    x.scatter_(1, y, float("-inf"))
    m = x.amax(dim=1)
    _softmax_into(x, out)
    x.scatter_(1, y, x_y)
    return m + _log_z(out)


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
    """Decoupled KD (Zhao et al., CVPR 2022): ce_weight CE + T^2 (alpha TCKD + beta NCKD).

    With a = s/T, b = t/T (centered), r = softmax(a), q = softmax(b), hats for the softmax
    over the non-target classes k != y and L_x = log sum_k exp(x_k), L'_x = log sum_{k!=y}:
    TCKD = KL((q_y, 1 - q_y) || (r_y, 1 - r_y)), log q_y = b_y - L_b, log(1 - q_y) = L'_b - L_b;
    NCKD = KL(q^ || r^) = q^ . (b - a) - L'_b + L'_a (the target class excluded exactly).
    Gradient: T [(beta - alpha d) r^ - beta q^ + alpha d onehot_y] + ce_weight (p - onehot_y),
    d = r_y - q_y (alpha = ``tckd_weight``, beta = ``nckd_weight``).
    """
    inv_t = 1.0 / temperature
    _centered(t, work_a, inv_t)  # work_a = b
    b_y = work_a.gather(1, y).view(-1)
    log_z_b_rest = _masked_log_z(work_a, y, work_b)  # work_b = q^
    m_s = _centered(s, g, inv_t)  # g = a
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
        p = _softmax_into(s, g)
        ce = _log_z(p) - (s.gather(1, y).to(g.dtype).view(-1) - m_s.view(-1))
        loss = loss + ce_weight * ce
        if ce_weight != 1.0:
            g.mul_(ce_weight)
        g.addcmul_(work_a, coef_r.unsqueeze(1))
    else:
        torch.mul(work_a, coef_r.unsqueeze(1), out=g)
    g.sub_(work_b, alpha=temperature * nckd_weight)
    g.scatter_add_(1, y, (at_y - ce_weight).unsqueeze(1))
    return loss


def relax_chunk(s: Tensor, y: Tensor, g: Tensor, alpha: float) -> Tensor:
    """Label relaxation (Lienen and Huellermeier, AAAI 2021): KL(p_r || p) where p_y < 1 - alpha,
    else 0, with p_r_y = 1 - alpha and p_r_k = alpha p_k / (1 - p_y) (p_r a constant).

    On the non-target classes p_r / p = alpha / (1 - p_y), so
    loss = (1 - alpha) log((1 - alpha) / p_y) + alpha log(alpha / (1 - p_y)), with log p_y from
    the logits; grad = p - p_r: p_k (1 - alpha / (1 - p_y)) for k != y, p_y - (1 - alpha) at y.
    """
    src = _source_rows(s, g)
    s_y = src.gather(1, y).view(-1)
    m, log_z = _softmax_log_z(src, g)
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
