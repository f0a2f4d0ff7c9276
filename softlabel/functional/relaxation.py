"""Label relaxation (Lienen and Huellermeier, AAAI 2021): no loss once p_y >= 1 - alpha."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as tf
from torch import Tensor

from softlabel.functional._fused import fused_per_position
from softlabel.functional._reduction import _reduce
from softlabel.functional._validation import Positions, check_alpha, check_reduction, prepare


def _binary_relaxation(positions: Positions, alpha: float) -> Tensor:
    """The 2-class case, p_y = sigmoid(+-logit): KL((1 - alpha, alpha) || (p_y, 1 - p_y))."""
    signed = torch.where(positions.binary_target > 0, positions.logits, -positions.logits)
    log_p_y, log_rest = tf.logsigmoid(signed), tf.logsigmoid(-signed)
    kl = torch.zeros_like(log_p_y)
    if alpha < 1.0:
        kl = kl + (1.0 - alpha) * (math.log1p(-alpha) - log_p_y)
    if alpha > 0.0:
        kl = kl + alpha * (math.log(alpha) - log_rest)
    return torch.where(log_p_y.exp() < 1.0 - alpha, kl, torch.zeros_like(kl))


def label_relaxation_loss(
    logits: Tensor,
    target: Tensor,
    alpha: float = 0.1,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    binary: bool | None = None,
) -> Tensor:
    """Label relaxation: ``KL(p_r || p)`` where ``p_y < 1 - alpha``, else 0.

    p = softmax(s); p_r_y = 1 - alpha and p_r_k = alpha p_k / sum_{j != y} p_j (the closest
    distribution to p in the credal set {q: q_y >= 1 - alpha}), treated as a constant, so the
    gradient is p - p_r. Since p_r / p = alpha / (1 - p_y) off the target, the value is
    ``(1 - alpha) log((1 - alpha) / p_y) + alpha log(alpha / (1 - p_y))``. alpha = 0 gives the
    cross-entropy, alpha = 1 gives 0. Binary (one logit per position, 0/1 target): the same
    with the two classes, p_y = sigmoid(logit) for y = 1 and 1 - sigmoid(logit) for y = 0.
    Needs class indices (or 0/1 binary targets), not class probabilities.
    """
    check_reduction(reduction)
    alpha = check_alpha(alpha)
    if target is None:
        raise ValueError("target is required for label_relaxation_loss, got target=None")
    positions = prepare(logits, target, ignore_index=ignore_index, weight=weight, binary=binary)
    if positions.probs is not None:
        raise ValueError(
            "label_relaxation_loss needs class indices of shape "
            f"{tuple(logits.shape[:-1])} (the credal set is built around the target class), got "
            f"class probabilities of shape {tuple(target.shape)}"
        )
    if positions.binary:
        per_position = _binary_relaxation(positions, alpha)
    else:
        per_position = fused_per_position(logits, positions, "relax", alpha=alpha)
    return _reduce(per_position, positions.mask, positions.sample_weight, reduction)
