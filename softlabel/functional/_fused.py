"""The one bridge from the public loss functions to the fused kernel (multiclass only).

Every multiclass loss is computed by ``softlabel.kernels.fused_per_row`` over the
positions flattened to rows: logits ``(..., K)`` -> ``(N, K)``, labels ``(...)`` -> ``(N,)``.
Validation has already run in ``prepare`` (and the ``check_*`` helpers), so the kernel's own
checks are skipped. Binary losses stay element-wise in their modules.
"""

from __future__ import annotations

from torch import Tensor

from softlabel.functional._validation import Positions
from softlabel.kernels import LossSpec, fused_per_row


def fused_per_position(logits: Tensor, positions: Positions, mode: str, **params) -> Tensor:
    """Unreduced multiclass loss of the target's shape (0 at ignored positions).

    ``logits`` are the caller's logits as given (half precision is upcast chunk by chunk
    inside the kernel, so no float32 copy of the whole tensor is made); ``mode`` and
    ``params`` are those of ``fused_soft_target_loss`` (``teacher`` or ``previous`` of the
    logits' shape, already detached). The result is in the compute dtype.
    """
    k = logits.shape[-1]
    for name in ("teacher", "previous"):
        if params.get(name) is not None:
            params[name] = params[name].reshape(-1, k)
    labels = None if positions.index is None else positions.index.reshape(-1)
    per_row = fused_per_row(
        logits.reshape(-1, k), labels, positions.mask.reshape(-1), LossSpec(mode=mode, **params)
    )
    return per_row.view(positions.mask.shape)
