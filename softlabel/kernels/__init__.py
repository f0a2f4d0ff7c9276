"""The loss engine and its parts, from the bottom up.

- ``spec``: the loss spec, the divergence names, the compute dtype;
- ``checks``: every input rule, once;
- ``references``: what rows are read from (logits, a linear head, a top-k reference);
- ``rowmath``, ``divergences``: row operations and the divergences shared by the modes;
- ``modes``: one file per method (chunk math, differentiable formula, binary form);
- ``chunks``, ``rows``: rows per chunk; the student's rows (logits or a linear head);
- ``engine``: the one chunk loop over those rows, its autograd functions;
- ``fused``, ``linear``: the public entries.
"""

from softlabel.kernels.chunks import default_linear_chunk_rows
from softlabel.kernels.fused import (
    MODES,
    FusedSoftTargetLossFunction,
    LossSpec,
    default_chunk_rows,
    fused_per_row,
    fused_soft_target_loss,
)
from softlabel.kernels.linear import LinearHead, fused_linear_loss
from softlabel.kernels.references import TopKLogits

__all__ = [
    "MODES",
    "FusedSoftTargetLossFunction",
    "LossSpec",
    "TopKLogits",
    "default_chunk_rows",
    "fused_per_row",
    "fused_soft_target_loss",
    "LinearHead",
    "default_linear_chunk_rows",
    "fused_linear_loss",
]
