"""Label smoothing towards a uniform or a class prior, multiclass and binary."""

from __future__ import annotations

from torch import Tensor

from softlabel.functional._engine import spec_loss
from softlabel.kernels.checks import check_smoothing
from softlabel.kernels.spec import LossSpec


def label_smoothing_loss(
    logits: Tensor,
    target: Tensor,
    smoothing: float = 0.1,
    prior: Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    binary: bool | None = None,
) -> Tensor:
    """Label-smoothed cross-entropy: ``(1 - eps) * CE(y, p) + eps * H(q, p)``.

    ``q`` is uniform (1/K, so the true class gets ``1 - eps + eps/K``; equal to torch's
    ``cross_entropy(label_smoothing=eps)`` without weight) or ``prior``, a length-K
    probability vector (length 2, ``[P(y=0), P(y=1)]``, for binary), or a class-conditional
    (K, K) matrix M whose row y is the smoothing distribution of class y:
    ``(1 - eps) * CE(y, p) + eps * H(M[y], p)`` (rows on the simplex; (2, 2) for binary).
    The value is a cross-entropy, not a KL. Binary: BCE-with-logits against
    ``y (1 - eps) + eps/2``. A probability target ``c`` (..., K) is smoothed the same way:
    ``(1 - eps) c + eps u``, with ``u = c M`` for a matrix.
    """
    eps = check_smoothing(smoothing)
    return spec_loss(
        logits,
        target,
        LossSpec("ls", {"eps": eps}, prior=prior),
        ignore_index=ignore_index,
        reduction=reduction,
        weight=weight,
        binary=binary,
        name="label_smoothing_loss",
    )
