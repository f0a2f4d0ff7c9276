"""The student's rows in a chunk and where their gradient goes: slices of logits (N, K), or
a linear head's ``hidden @ weight.T + bias`` made chunk by chunk with the head's gradients
accumulated as the chunks go."""

from __future__ import annotations

import torch
from torch import Tensor

from softlabel.kernels.chunks import arrays, default_chunk_rows, default_linear_chunk_rows
from softlabel.kernels.modes import MODES
from softlabel.kernels.references import LinearHead, reference_kind
from softlabel.kernels.spec import LossSpec, compute_dtype


class LogitRows:
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


class HeadRows:
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
