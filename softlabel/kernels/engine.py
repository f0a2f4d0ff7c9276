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
from softlabel.kernels.references import (
    LinearHead,
    materialized,
    reference_kind,
    reference_rows,
    sub_rows,
)
from softlabel.kernels.spec import LossSpec, compute_dtype

#: Bytes of all (chunk_rows, K) arrays one chunk of the chunk math touches (inputs and work
#: buffers together), per device type. On CPU a chunk's arrays should stay in the last-level
#: cache between the dozen row passes a chunk makes: 32 MiB gives 52 rows for KD and 131 rows
#: for CE/LS/ReLoop at K = 32000 fp32, about 15% faster for KD than 8x larger chunks
#: (docs/performance.md, ``benchmarks/chunks.py``). On GPUs every op is a kernel launch, so
#: chunks are large there.
CHUNK_BYTES = {"cpu": 32 << 20, "cuda": 256 << 20}

#: Budget for device types not listed in ``CHUNK_BYTES``.
DEFAULT_CHUNK_BYTES = 256 << 20

#: Bytes of the (chunk_rows, V) and (chunk_rows, H) arrays of one chunk of the linear-head
#: loss per device type: the gradient, the logits (made in the gradient buffer itself where
#: the mode reads them only there) and a live teacher's logits. Each chunk streams the whole
#: V x H weight through three matrix products (logits, grad_h and the grad_W update), so the
#: chunk is sized for those products, and the chunk math runs on sub-chunks of
#: ``default_chunk_rows``. 256 MiB on CPU: 1971 rows for LS and 684 for KD at V = 32000,
#: H = 1024, fp32; 512 rows (the floor) at V = 128256, H = 2048. The CUDA figure is a choice,
#: not a measurement.
LINEAR_CHUNK_BYTES = {"cpu": 256 << 20, "cuda": 1 << 30}

#: Budget for device types not listed in ``LINEAR_CHUNK_BYTES``.
DEFAULT_LINEAR_CHUNK_BYTES = 256 << 20

#: Fewest rows per linear-head chunk (unless N is smaller). A chunk's products do about
#: chunk_rows multiply-adds per weight element they read or update, so short products cost
#: more per row: on CPU (2 threads) the LS loss of 1024 rows at H = 2048, V = 128256 took
#: 14.5 s in chunks of 256 rows, 14.6 s in chunks of 512 and 13.4 s in one chunk
#: (docs/performance.md, "Linear-head loss", chunk sizes). 512 is a choice within that
#: spread, as is the CUDA figure.
MIN_CHUNK_ROWS = {"cpu": 512, "cuda": 1024}


def _default_spec(mode: str) -> LossSpec:
    return LossSpec(mode, MODES[mode].defaults)


def arrays(spec: LossSpec) -> int:
    """(chunk_rows, K) arrays one chunk of the chunk math touches: the logits, a dense or
    head teacher's rows, the gradient and the mode's work buffers."""
    teacher = reference_kind(spec.teacher) in ("logits", "head")
    mode = MODES[spec.mode]
    return 1 + teacher + 1 + mode.work_buffers(spec) + mode.temporaries(spec)


def default_chunk_rows(
    num_classes: int,
    dtype: torch.dtype = torch.float32,
    mode: str = "ls",
    device: torch.device | str = "cpu",
    arrays: int | None = None,
) -> int:
    """Rows per chunk so the chunk's arrays hold about ``CHUNK_BYTES[device type]`` (>= 1 row).

    ``arrays``: the (chunk_rows, K) arrays one chunk touches (default: the mode's count with
    its default settings and a dense teacher where it reads one).
    """
    itemsize = 8 if dtype == torch.float64 else 4
    budget = CHUNK_BYTES.get(torch.device(device).type, DEFAULT_CHUNK_BYTES)
    if arrays is None:
        default = _default_spec(mode)
        teacher = 1 if MODES[mode].teacher else 0
        arrays = 1 + teacher + 1 + MODES[mode].work_buffers(default)
    return max(1, budget // (arrays * num_classes * itemsize))


def default_linear_chunk_rows(
    vocab_size: int,
    hidden_size: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    arrays: int = 2,
) -> int:
    """Rows per linear-head chunk: the chunk's ``arrays`` (rows, V) arrays (logits and
    gradient, plus a live teacher's logits) and two (rows, H) arrays hold about
    ``LINEAR_CHUNK_BYTES[device type]``, with at least ``MIN_CHUNK_ROWS[device type]`` rows."""
    itemsize = 8 if dtype == torch.float64 else 4
    kind = torch.device(device).type
    budget = LINEAR_CHUNK_BYTES.get(kind, DEFAULT_LINEAR_CHUNK_BYTES)
    per_row = (arrays * vocab_size + 2 * hidden_size) * itemsize
    return max(MIN_CHUNK_ROWS.get(kind, 1), budget // per_row, 1)


class _LogitRows:
    """Student rows that are slices of the logits (N, K); the gradient goes into an (N, K)
    buffer of the logits' dtype (None when not wanted: a work buffer takes it)."""

    def __init__(self, logits: Tensor, need_grad: bool) -> None:
        self.logits = logits
        self.n, self.k = logits.shape
        self.cd = compute_dtype(logits.dtype)
        self.device = logits.device
        self.grad = (
            torch.empty_like(logits, memory_format=torch.contiguous_format) if need_grad else None
        )
        self._in_place = self.grad is not None and self.grad.dtype == self.cd
        self._work: Tensor | None = None

    def chunk_rows(self, spec: LossSpec) -> tuple[int, int]:
        rows = spec.chunk_rows or default_chunk_rows(
            self.k, self.cd, spec.mode, self.device, arrays(spec)
        )
        rows = min(self.n, rows)
        return rows, rows

    def skip(self, index: int) -> bool:
        return False

    def teacher_buffer(self, rows: int, teacher: LinearHead) -> Tensor:
        return teacher.hidden.new_empty((rows, teacher.weight.shape[0]))

    def rows(self, a: int, b: int, g: Tensor) -> Tensor:
        return self.logits[a:b]

    def grad_rows(self, a: int, b: int, rows: int) -> Tensor:
        if self._in_place:
            return self.grad[a:b]
        if self._work is None:
            self._work = self.logits.new_empty((rows, self.k), dtype=self.cd)
        return self._work[: b - a]

    def finish(self, a: int, b: int, g: Tensor) -> None:
        if self.grad is not None and not self._in_place:
            self.grad[a:b].copy_(g)

    def close(self, valid: Tensor | None) -> None:
        if valid is not None and self.grad is not None:  # ignored rows: gradient 0
            self.grad.index_fill_(0, (~valid).nonzero().view(-1), 0.0)


class _HeadRows:
    """Student rows ``hidden @ weight.T + bias`` made chunk by chunk; with ``row_weight``
    the gradients of ``sum_i row_weight_i loss_i`` w.r.t. hidden, weight and bias are
    accumulated chunk by chunk (None where ``needs`` is False)."""

    def __init__(
        self,
        head: LinearHead,
        valid: Tensor | None,
        spec: LossSpec,
        row_weight: Tensor | None,
        needs: tuple[bool, bool, bool],
    ) -> None:
        h, w = head.hidden, head.weight
        self.head = head
        self.n, self.k = h.shape[0], w.shape[0]
        self.cd = compute_dtype(h.dtype)
        self.device = h.device
        self.valid = valid
        self.row_weight = row_weight
        want = row_weight is not None
        self.grad_h = torch.zeros_like(h) if want and needs[0] else None
        self.grad_w = (
            torch.zeros((self.k, w.shape[1]), dtype=self.cd, device=w.device)
            if want and needs[1]
            else None
        )
        self.grad_b = (
            torch.zeros(self.k, dtype=self.cd, device=w.device) if want and needs[2] else None
        )
        self.rounded = want and h.dtype != self.cd  # half inputs: c g rounded to the input dtype
        self.shared = h.dtype == self.cd and MODES[spec.mode].logits_in_grad(spec)
        self.scale = MODES[spec.mode].grad_scale(spec)
        self.counts: list[int] | None = None
        self._buffers: tuple[Tensor, Tensor, Tensor | None] | None = None

    def chunk_rows(self, spec: LossSpec) -> tuple[int, int]:
        h = self.head.hidden
        head_teacher = reference_kind(spec.teacher) == "head"
        buffers = 1 + (not self.shared) + head_teacher + self.rounded
        rows = spec.chunk_rows or default_linear_chunk_rows(
            self.k, h.shape[1], self.cd, self.device, buffers
        )
        rows = min(self.n, rows)
        math_rows = min(rows, default_chunk_rows(self.k, self.cd, "ls", self.device, arrays(spec)))
        self.counts = _chunk_valid_counts(self.valid, self.n, rows)
        g_buf = h.new_empty((rows, self.k), dtype=self.cd)
        s_buf = g_buf if self.shared else h.new_empty((rows, self.k))
        round_buf = h.new_empty((rows, self.k)) if self.rounded else None
        self._buffers = (g_buf, s_buf, round_buf)
        return rows, math_rows

    def skip(self, index: int) -> bool:
        return self.counts is not None and self.counts[index] == 0  # every row ignored

    def teacher_buffer(self, rows: int, teacher: LinearHead) -> Tensor:
        return teacher.hidden.new_empty((rows, teacher.weight.shape[0]))

    def rows(self, a: int, b: int, g: Tensor) -> Tensor:
        return self.head.logits_into(a, b, self._buffers[1][: b - a])

    def grad_rows(self, a: int, b: int, rows: int) -> Tensor:
        return self._buffers[0][: b - a]

    def finish(self, a: int, b: int, g: Tensor, index: int) -> None:
        if self.row_weight is None:
            return
        h, w = self.head.hidden, self.head.weight
        r = b - a
        c = self.row_weight[a:b].to(self.cd).unsqueeze(1)
        if self.scale != 1.0:
            c = c * self.scale
        round_buf = self._buffers[2]
        gc = g.mul_(c) if round_buf is None else torch.mul(g, c, out=round_buf[:r])
        h_c = h[a:b]
        if self.counts is not None and self.counts[index] < r:  # ignored rows add 0 (NaN too)
            ignored = ~self.valid[a:b].unsqueeze(1)
            gc.masked_fill_(ignored, 0.0)
            h_c = h_c.masked_fill(ignored, 0.0)
        if self.grad_h is not None:
            torch.mm(gc, w, out=self.grad_h[a:b])
        if self.grad_w is not None:
            if gc.dtype == self.cd:
                self.grad_w.addmm_(gc.t(), h_c)
            else:
                self.grad_w.add_(torch.mm(gc.t(), h_c))
        if self.grad_b is not None:
            self.grad_b.add_(gc.sum(dim=0, dtype=self.cd))

    def close(self, valid: Tensor | None) -> None:
        pass

    def grads(self) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        w = self.head.weight
        return self.grad_h, _cast(self.grad_w, w), _cast(self.grad_b, w)


def _cast(grad: Tensor | None, like: Tensor) -> Tensor | None:
    return grad if grad is None or grad.dtype == like.dtype else grad.to(like.dtype)


def _chunk_valid_counts(valid: Tensor | None, n: int, rows: int) -> list[int] | None:
    """Rows that count in each chunk (one host transfer), or None when every row counts."""
    if valid is None:
        return None
    starts = torch.arange(0, n, rows, device=valid.device)
    cumulative = torch.cat([valid.new_zeros(1, dtype=torch.long), valid.cumsum(0)])
    return (cumulative[(starts + rows).clamp_max(n)] - cumulative[starts]).tolist()


def chunk_loop(
    student: _LogitRows | _HeadRows, labels: Tensor | None, valid: Tensor | None, spec: LossSpec
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
        if isinstance(student, _HeadRows):
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
        if isinstance(student, _HeadRows):
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
        rows = _LogitRows(logits, need_grad=True)
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
    loss = chunk_loop(_LogitRows(logits.detach(), need_grad=False), labels, valid, spec)
    return loss.float() if logits.dtype in (torch.float16, torch.bfloat16) else loss


def _head_pass(
    head: LinearHead,
    labels: Tensor | None,
    valid: Tensor | None,
    spec: LossSpec,
    row_weight: Tensor | None,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    rows = _HeadRows(head, valid, spec, row_weight, needs)
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
