"""Fused, chunked loss kernels (eager PyTorch, CPU and CUDA)."""

from softlabel.kernels.fused import (
    MODES,
    FusedSoftTargetLossFunction,
    LossSpec,
    default_chunk_rows,
    fused_per_row,
    fused_soft_target_loss,
)
from softlabel.kernels.linear import LinearHead, default_linear_chunk_rows, fused_linear_loss

__all__ = [
    "MODES",
    "FusedSoftTargetLossFunction",
    "LossSpec",
    "default_chunk_rows",
    "fused_per_row",
    "fused_soft_target_loss",
    "LinearHead",
    "default_linear_chunk_rows",
    "fused_linear_loss",
]
