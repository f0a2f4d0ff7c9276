"""The one bridge from the public loss functions to the fused kernel (multiclass only).

Every multiclass loss is computed by ``softlabel.kernels.fused_per_row`` over the
positions flattened to rows: logits ``(..., K)`` -> ``(N, K)``, labels ``(...)`` -> ``(N,)``
(or probability targets ``(..., K)`` -> ``(N, K)``). Validation has already run in
``prepare`` (and the ``check_*`` helpers), so the kernel's own checks are skipped; NaN and inf
logits are found here on the per-row loss (O(N)). Binary losses stay element-wise in their
modules.
"""

from __future__ import annotations

from torch import Tensor

from softlabel.functional._validation import Positions, check_finite_rows
from softlabel.kernels import LossSpec, fused_per_row


def fused_per_position(
    logits: Tensor,
    positions: Positions,
    mode: str,
    *,
    logits_name: str = "logits",
    **params,
) -> Tensor:
    """Unreduced multiclass loss of the positions' shape (0 at ignored positions).

    ``logits`` are the caller's logits as given (half precision is upcast chunk by chunk
    inside the kernel, so no float32 copy of the whole tensor is made); ``mode`` and
    ``params`` are those of ``fused_soft_target_loss`` (``teacher`` of the logits' shape,
    ``previous`` of the logits' shape or gathered to the positions' shape, already detached).
    The result is in the compute dtype. A row that counts and whose loss is not finite raises
    a ValueError naming the logits (or teacher logits) and the position.
    """
    k = logits.shape[-1]
    for name in ("teacher", "previous"):
        value = params.get(name)
        if value is not None:
            params[name] = (
                value.reshape(-1, k) if value.shape == logits.shape else value.reshape(-1)
            )
    if positions.probs is not None:
        params["soft_target"] = positions.probs.reshape(-1, k)
    labels = None if positions.index is None else positions.index.reshape(-1)
    per_row = fused_per_row(
        logits.reshape(-1, k), labels, positions.mask.reshape(-1), LossSpec(mode=mode, **params)
    ).view(positions.mask.shape)
    check_finite_rows(
        per_row.detach(), {logits_name: logits, "teacher_logits": params.get("teacher")}
    )
    return per_row
