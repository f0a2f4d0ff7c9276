"""Label smoothing towards a uniform or a class prior, multiclass and binary."""

from __future__ import annotations

from torch import Tensor

from softlabel.functional._fused import fused_per_position
from softlabel.functional._reduction import _reduce
from softlabel.functional._validation import (
    Positions,
    check_prior,
    check_reduction,
    check_smoothing,
    prepare,
)
from softlabel.functional.cross_entropy import binary_cross_entropy_from_logits


def _per_position_label_smoothing(
    logits: Tensor, positions: Positions, smoothing: float, prior: Tensor | None
) -> Tensor:
    """Unreduced ``(1 - eps) * CE(y, p) + eps * H(q, p)`` with q = uniform, ``prior`` or row y
    of a ``prior`` matrix.

    Multiclass through the fused kernel. Binary: BCE-with-logits against
    ``y' = y (1 - eps) + eps * q1`` (q1 = 1/2, ``prior[1]`` or ``prior[y, 1]``).
    """
    if positions.binary:
        if prior is None:
            positive = 0.5
        elif prior.dim() == 1:
            positive = prior[1]
        else:
            positive = prior[:, 1][positions.index]
        soft_target = positions.binary_target * (1 - smoothing) + smoothing * positive
        return binary_cross_entropy_from_logits(positions.logits, soft_target)
    return fused_per_position(logits, positions, "ls", eps=smoothing, prior=prior)


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
    check_reduction(reduction)
    eps = check_smoothing(smoothing)
    positions = prepare(logits, target, ignore_index=ignore_index, weight=weight, binary=binary)
    prior_vector = None
    if prior is not None:
        prior_vector = check_prior(prior, positions.num_classes, positions.logits)
    per_position = _per_position_label_smoothing(logits, positions, eps, prior_vector)
    return _reduce(per_position, positions.mask, positions.sample_weight, reduction)
