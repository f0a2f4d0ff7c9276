"""The loss engine and its parts, from the bottom up.

- ``spec``: the loss spec, the divergence names, the compute dtype;
- ``checks``: every input rule, once;
- ``references``: what rows are read from (logits, a linear head, a top-k reference);
- ``rowmath``, ``divergences``: row operations and the divergences shared by the modes;
- ``modes``: one file per method (chunk math, differentiable formula, binary form);
- ``engine``: the one chunk loop over logit rows or a linear head's rows;
- ``fused``, ``linear``: the public entries.
"""

from softlabel.kernels.engine import default_linear_chunk_rows
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
