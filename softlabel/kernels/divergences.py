"""The divergences D(p_t^T, p_s^T) of distillation, in one place for every path.

Teacher q = p_t^T and student r = p_s^T are compared by:

- ``forward_kl``: KL(q || r) (Hinton et al., 2015).
- ``reverse_kl``: KL(r || q).
- ``jsd``: beta KL(q || M) + (1 - beta) KL(r || M), M = beta q + (1 - beta) r, the
  generalized JSD of GKD (Agarwal et al., ICLR 2024); as TRL computes it, beta = 0 is the
  forward KL and beta = 1 the reverse KL.
- ``tvd``: 1/2 sum_k |q_k - r_k|.
- ``skew_forward_kl``: KL(q || a q + (1 - a) r), ``skew_reverse_kl``: KL(r || (1 - a) q + a r)
  with the skew a in [0, 1) (DistiLLM, Ko et al., ICML 2024); a = 0 gives the forward and the
  reverse KL.

Two forms of each, used by every path:

- ``terms``: the chunk kernel's in-place form, D per row and dD/da left in a buffer, where
  a = student logits / T (dense rows of the fused kernel, the k + 1 buckets of a top-k
  teacher);
- ``reference``: the differentiable formula on log-probabilities over the last dimension
  (double backward, the tests, top-k buckets in plain PyTorch, and the Bernoulli form of a
  binary task, whose two buckets are (sigmoid(x), 1 - sigmoid(x))).

Zero teacher probabilities (a ``-inf`` log-probability of a top-k bucket) count as
0 log 0 = 0; divergences that are infinite there (``strict_support``) are refused by the
checks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from softlabel.kernels.rowmath import log_z, softmax_into


def effective(divergence: str, beta: float, skew: float) -> str:
    """The divergence computed: the JSD at beta = 0 is the forward KL, at beta = 1 the
    reverse KL (as TRL's GKD computes them); a skew divergence at skew 0 is its KL."""
    if divergence == "jsd" and beta in (0.0, 1.0):
        return "forward_kl" if beta == 0.0 else "reverse_kl"
    if divergence in ("skew_forward_kl", "skew_reverse_kl") and skew == 0.0:
        return divergence[len("skew_") :]
    return divergence


def strict_support(divergence: str, beta: float, skew: float) -> bool:
    """True when D is infinite wherever the teacher gives probability 0 and the student not:
    the reverse KL (also as the JSD at beta = 1 and the skew reverse KL at skew 0)."""
    return effective(divergence, beta, skew) == "reverse_kl"


def work_buffers(divergence: str) -> int:
    """(rows, K) buffers ``terms`` needs besides g, a_buf and b_buf."""
    return 1 if divergence in ("jsd", "skew_forward_kl") else 0


def factor(divergence: str, beta: float, skew: float) -> float:
    """The factor of u = dD/da that ``terms`` leaves out of ``g`` (of the effective
    divergence)."""
    divergence = effective(divergence, beta, skew)
    if divergence == "tvd":
        return 0.5
    if divergence == "jsd":
        return 1.0 - beta
    if divergence == "skew_forward_kl":
        return 1.0 - skew
    return 1.0


def terms(
    g: Tensor,
    a_buf: Tensor,
    b_buf: Tensor,
    c_buf: Tensor | None,
    divergence: str,
    beta: float,
    skew: float,
) -> Tensor:
    """D (rows,) of the effective divergence; u = dD/da left in ``g`` divided by ``factor``.

    On entry g = a (student logits / T) and a_buf = b (teacher logits / T), both centered by
    their row maxima; r = softmax(a), q = softmax(b), log Z_x = log sum exp(x). On exit a_buf,
    b_buf (and c_buf, needed by the JSD and the skew forward KL) are free. With
    d = log r - log q (finite: from the centered logits, never log 0):

    - forward_kl: D = q . (b - a) - log Z_b + log Z_a, u = r - q.
    - reverse_kl: D = r . d, u = r (d - D).
    - jsd: w = log M - log q = logaddexp(log(1 - beta) + d, log beta), v = d - w:
      D = -beta q . w + (1 - beta) r . v, u = (1 - beta) r (v - r . v).
    - tvd: D = 1/2 sum |r - q|, u = r (h - r . h) / 2 with h = sign(r - q).
    - skew_forward_kl, m = a q + (1 - a) r: w = log m - log q = logaddexp(log(1 - a) + d,
      log a), D = -q . w, u = (1 - a) r (r . e - e) with e = q / m = exp(-w).
    - skew_reverse_kl, m = (1 - a) q + a r: w = log m - log q = logaddexp(log a + d,
      log(1 - a)), v = d - w = log r - log m, D = r . v, u = r ((v - e) - r . (v - e)) with
      e = a r / m = a exp(v).
    """
    divergence = effective(divergence, beta, skew)
    q = softmax_into(a_buf, b_buf)  # b_buf = q
    log_z_b = log_z(q) if divergence != "tvd" else None
    if divergence == "forward_kl":
        dot = a_buf.sub_(g).mul_(q).sum(dim=1)  # q . (b - a)
        r = softmax_into(g, a_buf)
        d = dot - log_z_b + log_z(r)
        torch.sub(r, q, out=g)
        return d
    if divergence == "tvd":
        # a -inf teacher logit leaves the TVD finite; the row is made NaN so that, as with every
        # other divergence, the finiteness check refuses it (one rule: teacher logits are finite)
        finite = torch.isfinite(a_buf.sum(dim=1))
        r = softmax_into(g, a_buf)
        torch.sub(r, q, out=g)
        d = 0.5 * torch.linalg.vector_norm(g, ord=1, dim=1)
        d = torch.where(finite, d, d.new_tensor(float("nan")))
        g.sign_()
        r_dot_h = torch.mul(r, g, out=b_buf).sum(dim=1)  # q is no longer needed
        g.sub_(r_dot_h.unsqueeze(1)).mul_(r)
        return d
    if divergence in ("reverse_kl", "skew_reverse_kl"):
        r = softmax_into(g, b_buf)  # q is no longer needed
        dlog = torch.sub(g, a_buf, out=a_buf).add_((log_z_b - log_z(r)).unsqueeze(1))
        if divergence == "reverse_kl":
            d = torch.mul(r, dlog, out=g).sum(dim=1)  # a is no longer needed
            torch.sub(dlog, d.unsqueeze(1), out=g).mul_(r)
            return d
        torch.add(dlog, math.log(skew), out=g)
        torch.logaddexp(g, g.new_tensor(math.log1p(-skew)), out=g)  # g = log m - log q
        v = dlog.sub_(g)  # log r - log m
        d = torch.mul(r, v, out=g).sum(dim=1)
        torch.exp(v, out=g).mul_(skew)  # e
        torch.sub(v, g, out=g)  # v - e
        r_dot = torch.mul(r, g, out=v).sum(dim=1)
        g.sub_(r_dot.unsqueeze(1)).mul_(r)
        return d
    # jsd (0 < beta < 1) and skew_forward_kl (0 < skew < 1): w = log M - log q
    weight = beta if divergence == "jsd" else skew
    r = softmax_into(g, c_buf)
    dlog = torch.sub(g, a_buf, out=a_buf).add_((log_z_b - log_z(r)).unsqueeze(1))
    torch.add(dlog, math.log1p(-weight), out=g)
    torch.logaddexp(g, g.new_tensor(math.log(weight)), out=g)  # g = w
    if divergence == "skew_forward_kl":
        d = q.mul_(g).sum(dim=1).neg_()  # q . (log q - log m); q is no longer needed
        g.neg_().exp_()  # e = q / m
        r_dot_e = torch.mul(r, g, out=b_buf).sum(dim=1)
        g.neg_().add_(r_dot_e.unsqueeze(1)).mul_(r)
        return d
    v = dlog.sub_(g)  # log r - log M
    teacher_kl = q.mul_(g).sum(dim=1).neg_()  # q . (log q - log M); q is no longer needed
    student_kl = torch.mul(r, v, out=b_buf).sum(dim=1)
    torch.sub(v, student_kl.unsqueeze(1), out=g).mul_(r)
    return beta * teacher_kl + (1.0 - beta) * student_kl


def _kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    """KL(a || b) over the last dimension from log-probabilities, 0 log 0 = 0 (``a`` carries
    no gradient where it is 0)."""
    a = log_a.exp()
    safe = torch.where(a > 0, log_a, torch.zeros_like(log_a))
    return (a * (safe - log_b)).sum(dim=-1)


def reference(log_q: Tensor, log_p: Tensor, divergence: str, beta: float, skew: float) -> Tensor:
    """D(q, p) over the last dimension for the teacher's ``log_q`` and the student's
    ``log_p`` (log-probabilities; differentiable to any order)."""
    divergence = effective(divergence, beta, skew)
    if divergence == "forward_kl":
        return _kl(log_q, log_p)
    if divergence == "reverse_kl":
        return _kl(log_p, log_q)
    if divergence == "tvd":
        return 0.5 * (log_q.exp() - log_p.exp()).abs().sum(dim=-1)
    if divergence == "skew_forward_kl":
        log_m = torch.logaddexp(log_q + math.log(skew), log_p + math.log1p(-skew))
        return _kl(log_q, log_m)
    if divergence == "skew_reverse_kl":
        log_m = torch.logaddexp(log_q + math.log1p(-skew), log_p + math.log(skew))
        return _kl(log_p, log_m)
    log_m = torch.logaddexp(log_q + math.log(beta), log_p + math.log1p(-beta))
    return beta * _kl(log_q, log_m) + (1.0 - beta) * _kl(log_p, log_m)


def bernoulli_log_probs(logits: Tensor) -> Tensor:
    """(log sigmoid(x), log sigmoid(-x)) stacked in a last dimension of 2: a binary logit as
    the two buckets of a distribution."""
    return torch.stack((F.logsigmoid(logits), F.logsigmoid(-logits)), dim=-1)
