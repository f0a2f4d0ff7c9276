"""The engine: one chunk loop for every mode, over logit rows or a linear head's rows.

``chunk_loop`` walks the N rows in chunks. Per chunk it takes the student's rows (a slice of
the logits, or ``hidden @ weight.T + bias`` made into a buffer), the teacher reference's
rows (a slice of dense logits, a live teacher head's logits made into a buffer, or a slice of
a top-k reference), and hands sub-chunks of cache-sized rows to the mode's ``chunk``
(``softlabel.kernels.modes``), which returns the per-row loss and writes
d loss_i / d logits_i (divided by the mode's ``grad_scale``) into the gradient rows. Then:

- logits: the gradient rows are the (N, K) gradient buffer itself (or are copied into it
  when the logits are in half precision); backward scales that buffer in place by
  ``grad_output[:, None]`` and hands it to autograd;
- linear head: with c_i the row's coefficient in the reduced loss, the head's gradients are
  accumulated at once (as in Liger-Kernel's fused-linear losses): grad_h[chunk] = (c g) W,
  grad_W += (c g)^T h_c, grad_b += sum_rows (c g). For ``reduction="none"`` c_i is known
  only in backward, which recomputes each chunk with c = ``grad_output``.

Apart from the gradient buffers only (chunk_rows, K) temporaries exist. Half-precision
inputs are computed in float32 (loss in float32, gradient in the input dtype); float64
inputs in float64. Under ``create_graph=True`` (double backward) backward differentiates
the mode's ``reference`` formula instead (on materialized logits): exact second-order
gradients at the plain formula's speed and memory. The engine checks nothing: its callers
(``softlabel.functional``, ``softlabel.kernels.fused_soft_target_loss``) have.
"""

from __future__ import annotations

import torch
from torch import Tensor

from softlabel.kernels.checks import check_probability_rows
from softlabel.kernels.modes import MODES, Mode
from softlabel.kernels.references import LinearHead, materialized, reference_rows, sub_rows
from softlabel.kernels.rows import HeadRows, LogitRows
from softlabel.kernels.spec import LossSpec, compute_dtype


def chunk_loop(
    student: LogitRows | HeadRows, labels: Tensor | None, valid: Tensor | None, spec: LossSpec
) -> Tensor:
    """The per-row loss (N,) in the compute dtype; gradients as ``student`` collects them.

    ``labels`` (N,) int64 class indices at every row (any class at ignored rows; None when
    the mode reads no target); ``valid`` (N,) bool, False at ignored rows (loss and gradient
    0), or None when every row counts.
    """
    mode: Mode = MODES[spec.mode]
    n, k, cd = student.n, student.k, student.cd
    loss = torch.zeros(n, dtype=cd, device=student.device)
    if n == 0:
        return loss
    if valid is not None and bool(valid.all()):
        valid = None
        if isinstance(student, HeadRows):
            student.valid = None
    outer, inner = student.chunk_rows(spec)
    teacher = spec.teacher
    t_buf = student.teacher_buffer(outer, teacher) if isinstance(teacher, LinearHead) else None
    work = [loss.new_empty((inner, k)) for _ in range(mode.work_buffers(spec))]
    state = mode.setup(spec, cd)
    y_all = None if labels is None else labels.unsqueeze(1)
    probs = spec.soft_target
    if probs is not None:  # row minima and sums, checked after the loop (O(N))
        q_min, q_sum = loss.new_zeros(n), loss.new_ones(n)  # skipped chunks pass the check
    previous = spec.previous
    for index, a in enumerate(range(0, n, outer)):
        b = min(n, a + outer)
        if student.skip(index):
            continue
        g = student.grad_rows(a, b, outer)
        s = student.rows(a, b, g)
        t = reference_rows(teacher, a, b, t_buf)
        for i in range(a, b, inner):
            j = min(b, i + inner)
            q = None
            if probs is not None:
                q = probs[i:j]
                torch.amin(q, dim=1, out=q_min[i:j])
                torch.sum(q, dim=1, dtype=cd, out=q_sum[i:j])
            loss[i:j] = mode.chunk(
                s[i - a : j - a],
                None if y_all is None else y_all[i:j],
                q,
                g[i - a : j - a],
                sub_rows(t, i - a, j - a),
                None if previous is None else previous[i:j],
                work,
                spec,
                state,
            )
        if isinstance(student, HeadRows):
            student.finish(a, b, g, index)
        else:
            student.finish(a, b, g)
    if probs is not None:
        check_probability_rows(q_min, q_sum)
    if valid is not None:  # ignored rows: loss 0, gradient 0 (also over NaN/inf logits)
        loss.masked_fill_(~valid, 0.0)
    student.close(valid)
    return loss


def reference_per_row(
    logits: Tensor, labels: Tensor | None, valid: Tensor | None, spec: LossSpec
) -> Tensor:
    """The per-row loss (N,) of the mode's differentiable formula (0 at ignored rows)."""
    s = logits.to(compute_dtype(logits.dtype))
    loss = MODES[spec.mode].reference(s, labels, spec, materialized(spec.teacher))
    if valid is not None:
        loss = torch.where(valid, loss, torch.zeros_like(loss))
    return loss


def _graph_is_kept() -> bool:
    """True when this backward runs with ``retain_graph`` (or when torch cannot tell)."""
    keep_graph = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return True if keep_graph is None else bool(keep_graph())


class LogitLoss(torch.autograd.Function):
    """Per-row loss of logits (N, K): forward computes loss and gradient, backward scales the
    gradient."""

    @staticmethod
    def forward(
        ctx, logits: Tensor, labels: Tensor | None, valid: Tensor | None, spec: LossSpec
    ) -> Tensor:
        rows = LogitRows(logits, need_grad=True)
        loss = chunk_loop(rows, labels, valid, spec)
        ctx.grad = rows.grad
        ctx.grad_scale = MODES[spec.mode].grad_scale(spec)
        ctx.inputs = (labels, valid, spec)
        ctx.save_for_backward(logits)  # a reference, read only by double backward
        out_dtype = torch.float32 if logits.dtype in (torch.float16, torch.bfloat16) else None
        return loss if out_dtype is None else loss.to(out_dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None, None, None]:
        if torch.is_grad_enabled():  # create_graph=True: a gradient with a graph is wanted
            (logits,) = ctx.saved_tensors
            per_row = reference_per_row(logits, *ctx.inputs)
            (grad,) = torch.autograd.grad(
                per_row, logits, grad_output.to(per_row.dtype), create_graph=True
            )
            return grad, None, None, None
        grad = ctx.grad
        row_scale = grad_output.unsqueeze(1)
        if ctx.grad_scale != 1.0:
            row_scale = row_scale * ctx.grad_scale
        if _graph_is_kept():  # the graph may be run again: keep the buffer intact
            return grad * row_scale, None, None, None
        ctx.grad = None  # drop our reference so autograd may reuse the buffer as .grad
        return grad.mul_(row_scale), None, None, None


def logits_per_row(
    logits: Tensor, labels: Tensor | None, valid: Tensor | None, spec: LossSpec
) -> Tensor:
    """The per-row loss (N,) of logits (N, K), with the fused backward when they need a
    gradient. Half precision gives float32, otherwise the logits' dtype."""
    logits = logits.contiguous()
    if torch.is_grad_enabled() and logits.requires_grad:
        return LogitLoss.apply(logits, labels, valid, spec)
    loss = chunk_loop(LogitRows(logits.detach(), need_grad=False), labels, valid, spec)
    return loss.float() if logits.dtype in (torch.float16, torch.bfloat16) else loss


def _head_pass(
    head: LinearHead,
    labels: Tensor | None,
    valid: Tensor | None,
    spec: LossSpec,
    row_weight: Tensor | None,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    rows = HeadRows(head, valid, spec, row_weight, needs)
    loss = chunk_loop(rows, labels, valid, spec)
    return (loss, *rows.grads())


def _double_backward_grads(ctx, grad_output: Tensor, row_weight: Tensor | None):
    """Gradients with a graph, from the differentiable formula on materialized logits."""
    hidden, weight, bias = ctx.saved_tensors
    labels, valid, spec = ctx.inputs
    per_row = reference_per_row(LinearHead(hidden, weight, bias).logits(), labels, valid, spec)
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
    def forward(ctx, hidden, weight, bias, labels, valid, spec, row_weight):
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2])
        per_row, grad_h, grad_w, grad_b = _head_pass(
            LinearHead(hidden, weight, bias), labels, valid, spec, row_weight, needs
        )
        ctx.grads = [grad_h, grad_w, grad_b]
        ctx.inputs = (labels, valid, spec)
        ctx.row_weight = row_weight
        ctx.save_for_backward(hidden, weight, bias)  # references, read only by double backward
        ctx.mark_non_differentiable(per_row)
        return torch.dot(per_row, row_weight.to(per_row.dtype)), per_row

    @staticmethod
    def backward(ctx, grad_output: Tensor, _grad_per_row: Tensor | None):
        nones = (None,) * 4
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
    def forward(ctx, hidden, weight, bias, labels, valid, spec):
        per_row, _, _, _ = _head_pass(
            LinearHead(hidden, weight, bias), labels, valid, spec, None, (False,) * 3
        )
        ctx.inputs = (labels, valid, spec)
        ctx.save_for_backward(hidden, weight, bias)
        return per_row

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        nones = (None,) * 3
        if torch.is_grad_enabled():
            return _double_backward_grads(ctx, grad_output, None) + nones
        hidden, weight, bias = ctx.saved_tensors
        labels, valid, spec = ctx.inputs
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2])
        _, grad_h, grad_w, grad_b = _head_pass(
            LinearHead(hidden, weight, bias), labels, valid, spec, grad_output, needs
        )
        return (grad_h, grad_w, grad_b, *nones)


def head_loss(
    head: LinearHead,
    labels: Tensor | None,
    valid: Tensor | None,
    spec: LossSpec,
    row_weight: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The loss of the logits ``head.hidden @ head.weight.T + head.bias`` (inputs the caller
    has checked) and the per-row loss (N,) without gradient.

    ``labels``, ``valid`` and ``spec`` are those of ``logits_per_row``; a teacher head in
    ``spec.teacher`` gets no gradient. With ``row_weight`` (N,) the loss is the scalar
    ``sum_i row_weight_i loss_i``, with gradients computed during forward; without, it is
    the per-row loss (N,), whose gradients are computed by a second pass in backward. The
    loss is in the compute dtype (float32 for half inputs).
    """
    teacher = spec.teacher
    if isinstance(teacher, LinearHead):
        spec = spec.replace(teacher=teacher.detached())
    grad_wanted = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (head.hidden, head.weight, head.bias)
    )
    if not grad_wanted:
        per_row, _, _, _ = _head_pass(head.detached(), labels, valid, spec, None, (False,) * 3)
        if row_weight is None:
            return per_row, per_row
        return torch.dot(per_row, row_weight.to(per_row.dtype)), per_row
    args = (head.hidden, head.weight, head.bias, labels, valid, spec)
    if row_weight is None:
        per_row = LinearLossPerRow.apply(*args)
        return per_row, per_row.detach()
    return LinearLossReduced.apply(*args, row_weight)
