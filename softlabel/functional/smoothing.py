"""Label smoothing towards a uniform or a class prior, multiclass and binary."""

from __future__ import annotations

import torch.nn.functional as tf
from torch import Tensor

from softlabel.functional._reduction import _reduce
from softlabel.functional._validation import check_prior, check_reduction, check_smoothing, prepare
from softlabel.functional.cross_entropy import (
    binary_cross_entropy_from_logits,
    nll_from_log_probs,
)


def _per_position_label_smoothing(
    logits: Tensor, index: Tensor, smoothing: float, prior: Tensor | None, binary: bool
) -> Tensor:
    """Unreduced ``(1 - eps) * CE(y, p) + eps * H(q, p)`` with q = uniform or ``prior``.

    Binary: BCE-with-logits against ``y' = y (1 - eps) + eps * q1`` (q1 = 1/2 or ``prior[1]``).
    """
    if binary:
        positive = 0.5 if prior is None else prior[1]
        soft_target = index.to(logits.dtype) * (1 - smoothing) + smoothing * positive
        return binary_cross_entropy_from_logits(logits, soft_target)
    log_probs = tf.log_softmax(logits, dim=-1)
    nll = nll_from_log_probs(log_probs, index)
    if smoothing == 0.0:
        return nll
    prior_cross_entropy = -log_probs.mean(dim=-1) if prior is None else -(log_probs @ prior)
    return (1 - smoothing) * nll + smoothing * prior_cross_entropy


def label_smoothing_loss(
    logits: Tensor,
    target: Tensor,
    smoothing: float = 0.1,
    prior: Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
) -> Tensor:
    """Label-smoothed cross-entropy: ``(1 - eps) * CE(y, p) + eps * H(q, p)``.

    ``q`` is uniform (1/K, so the true class gets ``1 - eps + eps/K``; equal to torch's
    ``cross_entropy(label_smoothing=eps)`` without weight) or ``prior``, a length-K
    probability vector (length 2, ``[P(y=0), P(y=1)]``, for binary). The value is a
    cross-entropy, not a KL. Binary: BCE-with-logits against ``y (1 - eps) + eps/2``.
    """
    check_reduction(reduction)
    eps = check_smoothing(smoothing)
    positions = prepare(logits, target, ignore_index=ignore_index, weight=weight)
    prior_vector = None
    if prior is not None:
        prior_vector = check_prior(prior, positions.num_classes, positions.logits)
    per_position = _per_position_label_smoothing(
        positions.logits, positions.index, eps, prior_vector, positions.binary
    )
    return _reduce(per_position, positions.mask, positions.sample_weight, reduction)
