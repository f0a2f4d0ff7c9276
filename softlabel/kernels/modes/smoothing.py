"""Modes ``hard`` and ``ls``: cross-entropy, and label smoothing toward a prior.

``hard``: CE = lse(s) - s_y. ``ls``: (1 - eps) CE + eps H(u, p), H(u, p) = -sum_k u_k log p_k,
with u uniform 1/K (Szegedy et al., CVPR 2016; torch's ``label_smoothing``), a prior vector
(K,) (Inception's label prior), or row y of a class-conditional (K, K) prior matrix (the
online label smoothing of Zhang et al., IEEE TIP 2021). A probability target c stands in
for y: s_y -> c . s, onehot_y -> c, and u -> c M for a matrix.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from softlabel.kernels.checks import check_smoothing
from softlabel.kernels.modes.base import Mode
from softlabel.kernels.rowmath import as_compute, softmax_log_z, source_rows
from softlabel.kernels.spec import LossSpec


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
    src = source_rows(s, g)
    if q is None:
        s_y = src.gather(1, y).view(-1)
        q_sum = 1.0
    else:
        q = as_compute(q, g)
        s_y = torch.linalg.vecdot(src, q)
        q_sum = q.sum(dim=1)
    if eps > 0.0:  # u . s, taken before g is overwritten
        dot_u = src.sum(dim=1) / k if prior_eps is None else torch.mv(src, prior_eps) / eps
    m, log_z = softmax_log_z(src, g)
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
    src = source_rows(s, g)
    if q is None:
        torch.index_select(prior_matrix, 0, y.view(-1), out=work)  # M[y]
        s_y = src.gather(1, y).view(-1)
        q_sum = 1.0
    else:
        q = as_compute(q, g)
        torch.mm(q, prior_matrix, out=work)  # c M
        s_y = torch.linalg.vecdot(src, q)
        q_sum = q.sum(dim=1)
    u_sum = work.sum(dim=1)
    m, log_z = softmax_log_z(src, g)
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


def cross_entropy_rows(log_p: Tensor, labels: Tensor | None, soft_target: Tensor | None) -> Tensor:
    """-sum_k c_k log p_k per row with c = onehot(labels) or the probability target."""
    if soft_target is not None:
        return -(soft_target.to(log_p.dtype) * log_p).sum(dim=1)
    return -log_p.gather(1, labels.unsqueeze(1)).squeeze(1)


def binary_cross_entropy(logits: Tensor, soft_target: Tensor | float) -> Tensor:
    """``-(q log sigmoid(x) + (1 - q) log sigmoid(-x))``, stable for large ``|x|``."""
    return -(soft_target * F.logsigmoid(logits) + (1 - soft_target) * F.logsigmoid(-logits))


class Hard(Mode):
    """``hard``: the cross-entropy."""

    name = "hard"
    has_binary = True

    def logits_in_grad(self, spec: LossSpec) -> bool:
        return True

    def chunk(self, s, y, q, g, t, prev, work, spec, state) -> Tensor:
        return ce_ls_chunk(s, y, g, 0.0, None, 1.0, q)

    def reference(self, s, labels, spec, teacher=None) -> Tensor:
        return cross_entropy_rows(torch.log_softmax(s, dim=1), labels, spec.soft_target)

    def binary(self, logits, target, spec, reference) -> Tensor:
        return binary_cross_entropy(logits, target)


class Smoothing(Mode):
    """``ls``: (1 - eps) CE + eps H(u, p); params ``eps``; ``spec.prior`` u (K,), a (K, K)
    matrix, or None for the uniform 1/K."""

    name = "ls"
    defaults = {"eps": 0.1}
    checks = {"eps": partial(check_smoothing, name="eps")}
    prior = True
    has_binary = True

    def work_buffers(self, spec: LossSpec) -> int:
        return 1 if spec.prior is not None and spec.prior.dim() == 2 else 0

    def logits_in_grad(self, spec: LossSpec) -> bool:
        return spec.prior is None or spec.prior.dim() == 1

    def setup(self, spec: LossSpec, dtype: Any) -> Any:
        """(eps * u, sum(u)) for a prior vector, (M, None) for a matrix, (None, 1) uniform."""
        if spec.prior is None:
            return None, 1.0
        prior = spec.prior.to(dtype)
        if prior.dim() == 2:  # a (K, K) matrix is used as it is (no scaled copy of K^2 values)
            return prior, None
        return prior * spec.eps, float(prior.sum())

    def chunk(self, s, y, q, g, t, prev, work, spec, state) -> Tensor:
        prior_eps, prior_sum = state
        if prior_eps is not None and prior_eps.dim() == 2:
            return ce_prior_matrix_chunk(s, y, g, spec.eps, prior_eps, work[0][: s.shape[0]], q)
        return ce_ls_chunk(s, y, g, spec.eps, prior_eps, prior_sum, q)

    def reference(self, s, labels, spec, teacher=None) -> Tensor:
        log_p = torch.log_softmax(s, dim=1)
        hard = cross_entropy_rows(log_p, labels, spec.soft_target)
        if spec.prior is None:
            smooth = -log_p.mean(dim=1)
        elif spec.prior.dim() == 1:
            smooth = -(log_p @ spec.prior.to(s.dtype))
        else:  # class-conditional: u = M[y], or c M for a probability target c
            matrix = spec.prior.to(s.dtype)
            if spec.soft_target is not None:
                u = spec.soft_target.to(s.dtype) @ matrix
            else:
                u = matrix[labels]
            smooth = -(u * log_p).sum(dim=1)
        return (1.0 - spec.eps) * hard + spec.eps * smooth

    def binary(self, logits, target, spec, reference) -> Tensor:
        """BCE-with-logits against y' = y (1 - eps) + eps q1, q1 = 1/2, ``prior[1]`` or
        ``prior[y, 1]``."""
        prior = spec.prior
        if prior is None:
            positive: Tensor | float = 0.5
        elif prior.dim() == 1:
            positive = prior[1]
        else:
            positive = prior[:, 1][target.long()]
        soft_target = target * (1 - spec.eps) + spec.eps * positive
        return binary_cross_entropy(logits, soft_target)
