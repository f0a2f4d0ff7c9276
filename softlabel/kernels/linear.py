"""Fused linear-head soft-target loss: the logits ``hidden @ weight.T + bias`` are never built.

Rows are processed in chunks. Per chunk: ``s = h_c @ W^T + b`` (and the teacher's
``t = th_c @ TW^T + tb``), the per-chunk math of the fused kernel (``fused._chunk_loss``,
every mode of ``LossSpec``, run on sub-chunks of the fused kernel's cache-sized row count)
writes ``g = d loss_i / d s_i`` (divided by ``grad_scale``) into a chunk buffer, and with
``c_i`` the row's coefficient in the reduced loss the gradients are accumulated at once (as in
Liger-Kernel's fused-linear losses):

    grad_h[chunk] = (c g) W,    grad_W += (c g)^T h_c,    grad_b += sum_rows (c g).

Only (chunk_rows, V) arrays exist; the largest other allocations are the gradients of the
inputs ((N, H), (V, H), (V,)), as in any backward through the head.

- ``reduction`` mean/sum: ``c_i`` (``row_weight``: 1, 1/count or w_i / sum w) is known before
  the pass, so forward computes the gradients and backward scales them by ``grad_output``.
- ``reduction`` none: ``c_i`` is the incoming ``grad_output_i``, known only in backward.
  Forward computes the loss alone and backward recomputes each chunk's logits and math with
  ``c = grad_output``: twice the chunk math and one more logits matmul, never (N, V).
- Double backward (``create_graph=True``): backward recomputes the loss with the
  differentiable formula (``_reference.per_row_loss``) on the materialized logits
  ``F.linear(hidden, weight, bias)``; exact second-order gradients at the plain formula's
  speed and memory (this path does build (N, V) logits).

Half-precision inputs: the chunk's logits are made in the input dtype (as ``F.linear`` would),
the math runs in float32, ``c g`` is rounded once to the input dtype for the two gradient
matmuls, and ``grad_W``/``grad_b`` are accumulated over chunks in float32. float64 stays
float64.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from softlabel.kernels._reference import per_row_loss
from softlabel.kernels.fused import (
    LossSpec,
    _check_probability_rows,
    _chunk_loss,
    _compute_dtype,
    _graph_is_kept,
    _work_buffers,
    default_chunk_rows,
    grad_scale,
)

#: Bytes of the (chunk_rows, V) and (chunk_rows, H) arrays of one chunk per device type: the
#: gradient, the logits (made in the gradient buffer itself for CE, LS and ReLoop in fp32 and
#: fp64) and the teacher's logits (KD, DKD). Unlike the logits-only kernel (32 MiB on CPU, sized
#: for the last-level cache, which this loss keeps for the chunk math by running it on
#: sub-chunks of ``fused.default_chunk_rows`` rows), each chunk here streams the whole V x H
#: weight through three matrix products (logits, grad_h and the grad_W update), so the chunk
#: is sized for those products. 256 MiB on CPU: 1971 rows for LS and 684 for KD at V = 32000,
#: H = 1024, fp32; 512 rows (the floor) at V = 128256, H = 2048. The CUDA figure is a choice,
#: not a measurement.
LINEAR_CHUNK_BYTES = {"cpu": 256 << 20, "cuda": 1 << 30}

#: Budget for device types not listed in ``LINEAR_CHUNK_BYTES``.
DEFAULT_LINEAR_CHUNK_BYTES = 256 << 20

#: Fewest rows per chunk (unless N is smaller). A chunk's products do about chunk_rows
#: multiply-adds per weight element they read or update, so short products cost more per
#: row: on CPU (2 threads) the LS loss of 1024 rows at H = 2048, V = 128256 took 14.5 s in
#: chunks of 256 rows, 14.6 s in chunks of 512 and 13.4 s in one chunk (docs/performance.md,
#: "Linear-head loss", chunk sizes). 512 is a choice within that spread, as is the CUDA figure.
MIN_CHUNK_ROWS = {"cpu": 512, "cuda": 1024}


def default_linear_chunk_rows(
    vocab_size: int,
    hidden_size: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    arrays: int = 2,
) -> int:
    """Rows per chunk: the chunk's ``arrays`` (rows, V) arrays (logits and gradient, plus the
    teacher's logits for KD) and two (rows, H) arrays hold about
    ``LINEAR_CHUNK_BYTES[device type]``, with at least ``MIN_CHUNK_ROWS[device type]`` rows."""
    itemsize = 8 if dtype == torch.float64 else 4
    kind = torch.device(device).type
    budget = LINEAR_CHUNK_BYTES.get(kind, DEFAULT_LINEAR_CHUNK_BYTES)
    per_row = (arrays * vocab_size + 2 * hidden_size) * itemsize
    return max(MIN_CHUNK_ROWS.get(kind, 1), budget // per_row, 1)


def _reads_logits_through_gradient(spec: LossSpec) -> bool:
    """True when the chunk math of ``spec`` reads the logits only as the rows it would upcast
    into the gradient buffer ``g`` (``_chunk_math._source_rows``, the path half-precision
    logits take), so that the logits can be made in ``g`` itself: one (rows, V) array less.
    That is CE and label smoothing toward a prior vector (``ce_ls_chunk``) and ReLoop."""
    if spec.mode == "ls":
        return spec.prior is None or spec.prior.dim() == 1
    return spec.mode in ("hard", "reloop")


def _prior_terms(spec: LossSpec, cd: torch.dtype) -> tuple[Tensor | None, float | None]:
    """``prior_eps`` and ``prior_sum`` as the fused kernel hands them to ``_chunk_loss``."""
    if spec.mode != "ls" or spec.prior is None:
        return None, None
    prior = spec.prior.to(cd)
    if prior.dim() == 2:  # class-conditional (K, K) matrix, used as it is
        return prior, None
    return prior * spec.eps, float(prior.sum())


@dataclass(frozen=True)
class LinearHead:
    """A linear head's inputs: logits = ``hidden @ weight.T + bias``, made chunk by chunk.

    ``hidden`` (N, H), ``weight`` (V, H), ``bias`` (V,) or None, one dtype and device.
    """

    hidden: Tensor
    weight: Tensor
    bias: Tensor | None = None

    def logits_into(self, a: int, b: int, out: Tensor) -> Tensor:
        """Write rows a:b of the logits into ``out`` (b - a, V) and return it."""
        if self.bias is None:
            return torch.mm(self.hidden[a:b], self.weight.t(), out=out)
        return torch.addmm(self.bias, self.hidden[a:b], self.weight.t(), out=out)

    def logits(self) -> Tensor:
        """All (N, V) logits (double backward and error messages only)."""
        return F.linear(self.hidden, self.weight, self.bias)


def _chunk_valid_counts(valid: Tensor | None, n: int, rows: int) -> list[int] | None:
    """Rows that count in each chunk (one host transfer), or None when every row counts."""
    if valid is None:
        return None
    starts = torch.arange(0, n, rows, device=valid.device)
    cumulative = torch.cat([valid.new_zeros(1, dtype=torch.long), valid.cumsum(0)])
    return (cumulative[(starts + rows).clamp_max(n)] - cumulative[starts]).tolist()


def _linear_pass(
    student: LinearHead,
    labels: Tensor | None,
    valid: Tensor | None,
    spec: LossSpec,
    teacher: LinearHead | None,
    row_weight: Tensor | None,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """One pass over row chunks: per-row loss (N,) in the compute dtype and, when
    ``row_weight`` is given, the gradients of ``sum_i row_weight_i loss_i`` with respect to
    hidden, weight and bias (None where ``needs`` is False)."""
    h, w = student.hidden, student.weight
    n, k = h.shape[0], w.shape[0]
    cd = _compute_dtype(h.dtype)
    loss = torch.zeros(n, dtype=cd, device=h.device)
    want = row_weight is not None
    grad_h = torch.zeros_like(h) if want and needs[0] else None
    grad_w = torch.zeros((k, w.shape[1]), dtype=cd, device=w.device) if want and needs[1] else None
    grad_b = torch.zeros(k, dtype=cd, device=w.device) if want and needs[2] else None
    if n == 0:
        return loss, grad_h, _cast(grad_w, w), _cast(grad_b, w)
    if valid is not None and bool(valid.all()):
        valid = None
    rounded = want and h.dtype != cd  # half inputs: c g rounded to the input dtype
    shared = h.dtype == cd and _reads_logits_through_gradient(spec)
    inputs = 1 + (teacher is not None)  # the chunk's logits and teacher logits
    rows = spec.chunk_rows or default_linear_chunk_rows(
        k, h.shape[1], cd, h.device, inputs + (not shared) + rounded
    )
    rows = min(n, rows)
    # the chunk math runs on sub-chunks of the fused kernel's (cache-sized) rows
    n_work = _work_buffers(spec)
    math_rows = min(rows, default_chunk_rows(k, cd, "ls", h.device, inputs + 1 + n_work))
    counts = _chunk_valid_counts(valid, n, rows)
    g_buf = h.new_empty((rows, k), dtype=cd)
    s_buf = g_buf if shared else h.new_empty((rows, k))
    t_buf = teacher.hidden.new_empty((rows, k)) if teacher is not None else None
    work = [h.new_empty((math_rows, k), dtype=cd) for _ in range(n_work)]
    work_a, work_b, work_c = (work + [None, None, None])[:3]
    round_buf = h.new_empty((rows, k)) if rounded else None
    prior_eps, prior_sum = _prior_terms(spec, cd)
    if labels is not None:
        labels = labels.unsqueeze(1)
    probs = spec.soft_target
    if probs is not None:
        q_min, q_sum = loss.new_zeros(n), loss.new_ones(n)  # skipped chunks pass the check
    scale = grad_scale(spec)
    for index, a in enumerate(range(0, n, rows)):
        b = min(n, a + rows)
        r = b - a
        if counts is not None and counts[index] == 0:
            continue  # every row ignored: loss 0, gradient 0
        s = student.logits_into(a, b, s_buf[:r])
        t = None if teacher is None else teacher.logits_into(a, b, t_buf[:r])
        g = g_buf[:r]
        for i in range(a, b, math_rows):
            j = min(b, i + math_rows)
            y = None if labels is None else labels[i:j]
            q = None
            if probs is not None:
                q = probs[i:j]
                torch.amin(q, dim=1, out=q_min[i:j])
                torch.sum(q, dim=1, dtype=cd, out=q_sum[i:j])
            t_ij = None if t is None else t[i - a : j - a]
            loss[i:j] = _chunk_loss(
                s[i - a : j - a],
                y,
                q,
                g[i - a : j - a],
                spec,
                i,
                j,
                work_a,
                work_b,
                prior_eps,
                prior_sum,
                t_ij,
                work_c=work_c,
            )
        if not want:
            continue
        c = row_weight[a:b].to(cd).unsqueeze(1)
        if scale != 1.0:
            c = c * scale
        gc = g.mul_(c) if round_buf is None else torch.mul(g, c, out=round_buf[:r])
        h_c = h[a:b]
        if counts is not None and counts[index] < r:  # ignored rows add 0, also over NaN/inf
            ignored = ~valid[a:b].unsqueeze(1)
            gc.masked_fill_(ignored, 0.0)
            h_c = h_c.masked_fill(ignored, 0.0)
        if grad_h is not None:
            torch.mm(gc, w, out=grad_h[a:b])
        if grad_w is not None:
            if gc.dtype == cd:
                grad_w.addmm_(gc.t(), h_c)
            else:
                grad_w.add_(torch.mm(gc.t(), h_c))
        if grad_b is not None:
            grad_b.add_(gc.sum(dim=0, dtype=cd))
    if probs is not None:
        _check_probability_rows(q_min, q_sum)
    if valid is not None:
        loss.masked_fill_(~valid, 0.0)
    return loss, grad_h, _cast(grad_w, w), _cast(grad_b, w)


def _cast(grad: Tensor | None, like: Tensor) -> Tensor | None:
    return grad if grad is None or grad.dtype == like.dtype else grad.to(like.dtype)


def _double_backward_grads(ctx, grad_output: Tensor, row_weight: Tensor | None):
    """Gradients with a graph, from the differentiable formula on materialized logits."""
    hidden, weight, bias = ctx.saved_tensors
    labels, valid, spec, teacher = ctx.inputs
    if teacher is not None:
        spec = replace(spec, teacher=teacher.logits())
    per_row = per_row_loss(F.linear(hidden, weight, bias), labels, valid, spec)
    if row_weight is not None:
        per_row = per_row * row_weight.to(per_row.dtype)
        grad_output = grad_output.expand_as(per_row)
    wanted = [x for x, need in zip((hidden, weight, bias), ctx.needs_input_grad[:3]) if need]
    found = iter(
        torch.autograd.grad(per_row, wanted, grad_output.to(per_row.dtype), create_graph=True)
    )
    return tuple(next(found) if need else None for need in ctx.needs_input_grad[:3])


class LinearLossReduced(torch.autograd.Function):
    """``sum_i row_weight_i loss_i`` (scalar) and the per-row loss (no gradient); the
    gradients of hidden, weight and bias are computed in forward and scaled in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, valid, spec, teacher, row_weight):
        student = LinearHead(hidden, weight, bias)
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2])
        per_row, grad_h, grad_w, grad_b = _linear_pass(
            student, labels, valid, spec, teacher, row_weight, needs
        )
        ctx.grads = [grad_h, grad_w, grad_b]
        ctx.inputs = (labels, valid, spec, teacher)
        ctx.row_weight = row_weight
        ctx.save_for_backward(hidden, weight, bias)  # references, read only by double backward
        ctx.mark_non_differentiable(per_row)
        return torch.dot(per_row, row_weight.to(per_row.dtype)), per_row

    @staticmethod
    def backward(ctx, grad_output: Tensor, _grad_per_row: Tensor | None):
        nones = (None,) * 5
        if torch.is_grad_enabled():  # create_graph=True: a gradient with a graph is wanted
            return _double_backward_grads(ctx, grad_output, ctx.row_weight) + nones
        keep = _graph_is_kept()
        unit = not keep and bool(grad_output == 1.0)  # loss.backward(): nothing to scale
        out = []
        for grad in ctx.grads:
            if grad is None or unit:
                out.append(grad)
            elif keep:  # the graph may be run again: keep the stored gradient intact
                out.append(grad * grad_output.to(grad.dtype))
            else:
                out.append(grad.mul_(grad_output.to(grad.dtype)))
        if not keep:
            ctx.grads = [None, None, None]
        return (*out, *nones)


class LinearLossPerRow(torch.autograd.Function):
    """The per-row loss (N,); backward recomputes each chunk with ``c = grad_output``."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, valid, spec, teacher):
        per_row, _, _, _ = _linear_pass(
            LinearHead(hidden, weight, bias), labels, valid, spec, teacher, None, (False,) * 3
        )
        ctx.inputs = (labels, valid, spec, teacher)
        ctx.save_for_backward(hidden, weight, bias)
        return per_row

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        nones = (None,) * 4
        if torch.is_grad_enabled():
            return _double_backward_grads(ctx, grad_output, None) + nones
        hidden, weight, bias = ctx.saved_tensors
        labels, valid, spec, teacher = ctx.inputs
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2])
        _, grad_h, grad_w, grad_b = _linear_pass(
            LinearHead(hidden, weight, bias), labels, valid, spec, teacher, grad_output, needs
        )
        return (grad_h, grad_w, grad_b, *nones)


def fused_linear_loss(
    student: LinearHead,
    labels: Tensor | None,
    valid: Tensor | None,
    spec: LossSpec,
    teacher: LinearHead | None = None,
    row_weight: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The loss of the logits ``student.hidden @ student.weight.T + student.bias`` (inputs the
    caller has validated; no checks here) and the per-row loss (N,) without gradient.

    ``labels``, ``valid`` and ``spec`` are those of ``fused.fused_per_row`` except that
    ``spec.teacher`` is None: the teacher's logits are made chunk by chunk from ``teacher``
    (its tensors get no gradient). With ``row_weight`` (N,) the loss is the scalar
    ``sum_i row_weight_i loss_i``, with gradients computed during forward; without, it is the
    per-row loss (N,), whose gradients are computed by a second pass in backward. The loss is
    in the compute dtype (float32 for half inputs).
    """
    teacher = _detached(teacher)
    grad_wanted = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (student.hidden, student.weight, student.bias)
    )
    if not grad_wanted:
        plain = _detached(student)
        per_row, _, _, _ = _linear_pass(plain, labels, valid, spec, teacher, None, (False,) * 3)
        if row_weight is None:
            return per_row, per_row
        return torch.dot(per_row, row_weight.to(per_row.dtype)), per_row
    args = (student.hidden, student.weight, student.bias, labels, valid, spec, teacher)
    if row_weight is None:
        per_row = LinearLossPerRow.apply(*args)
        return per_row, per_row.detach()
    return LinearLossReduced.apply(*args, row_weight)


def _detached(head: LinearHead | None) -> LinearHead | None:
    if head is None:
        return None
    bias = None if head.bias is None else head.bias.detach()
    return LinearHead(head.hidden.detach(), head.weight.detach(), bias)
