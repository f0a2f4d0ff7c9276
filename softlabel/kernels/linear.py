"""Fused linear-head soft-target loss: the logits ``hidden @ weight.T + bias`` are never built.

The engine (``softlabel.kernels.engine``) makes the logits chunk by chunk and accumulates the
head's gradients as it goes; every mode and every teacher reference (dense logits, a live
teacher head, a top-k reference) runs there. This module is its entry for callers that have
checked their inputs (``softlabel.functional.linear``, ``softlabel.LinearSoftTargetLoss``).
"""

from __future__ import annotations

from torch import Tensor

from softlabel.kernels.chunks import (
    DEFAULT_LINEAR_CHUNK_BYTES,
    LINEAR_CHUNK_BYTES,
    MIN_CHUNK_ROWS,
    default_linear_chunk_rows,
)
from softlabel.kernels.engine import head_loss
from softlabel.kernels.references import LinearHead
from softlabel.kernels.spec import LossSpec

__all__ = [
    "DEFAULT_LINEAR_CHUNK_BYTES",
    "LINEAR_CHUNK_BYTES",
    "MIN_CHUNK_ROWS",
    "LinearHead",
    "default_linear_chunk_rows",
    "fused_linear_loss",
]


def fused_linear_loss(
    student: LinearHead,
    labels: Tensor | None,
    valid: Tensor | None,
    spec: LossSpec,
    teacher: LinearHead | None = None,
    row_weight: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The loss of the logits ``student.hidden @ student.weight.T + student.bias`` (inputs the
    caller has checked) and the per-row loss (N,) without gradient; see
    ``engine.head_loss``. ``teacher``: a teacher head, in place of ``spec.teacher``."""
    if teacher is not None:
        spec = spec.replace(teacher=teacher)
    return head_loss(student, labels, valid, spec, row_weight)
