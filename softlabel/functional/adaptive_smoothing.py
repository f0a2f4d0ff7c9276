"""Adaptive label smoothing.

- Margin-based label smoothing (MbLS; Liu et al., CVPR 2022): cross-entropy plus a linear
  penalty on the logit distances to the largest logit that exceed a margin (mode ``margin``).
- Confidence-adaptive label smoothing (AdaLabel; Wang et al., ACL 2021): label smoothing whose
  eps is computed per position from the model's own (detached) prediction (mode
  ``confidence``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from softlabel.functional._engine import spec_loss
from softlabel.kernels.checks import (
    check_confidence_margin,
    check_ignore_index,
    check_margin,
    check_penalty,
    check_power,
    prepare,
)
from softlabel.kernels.chunks import default_chunk_rows
from softlabel.kernels.modes import MODES
from softlabel.kernels.modes.adaptive_smoothing import confidence_cap, confidence_eps
from softlabel.kernels.spec import LossSpec, compute_dtype

__all__ = [
    "check_confidence_margin",
    "check_margin",
    "check_penalty",
    "check_power",
    "confidence_smoothing_eps",
    "confidence_smoothing_loss",
    "margin_smoothing_loss",
]


def margin_smoothing_loss(
    logits: Tensor,
    target: Tensor,
    margin: float = 10.0,
    penalty: float = 0.1,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
) -> Tensor:
    """Margin-based label smoothing: ``CE(s, y) + penalty * sum_k max(0, max_j s_j - s_k - m)``.

    Liu, Ben Ayed, Galdran and Dolz, "The Devil is in the Margins: Margin-based Label
    Smoothing for Network Calibration", CVPR 2022: label smoothing pushes every
    logit distance ``d_k = max_j s_j - s_k`` to 0 (an equality constraint); MbLS penalises
    only the distances above the margin ``m``, so only confident predictions (large
    distances) are smoothed, per sample and per class. The penalty is summed over classes
    per position (the authors' code averages it over classes as well: their
    ``alpha`` is ``penalty * K`` here). Multiclass only; ``target`` holds class indices or
    probabilities (for the CE term).
    """
    spec = LossSpec("margin", {"margin": check_margin(margin), "penalty": check_penalty(penalty)})
    return spec_loss(
        logits,
        target,
        spec,
        ignore_index=ignore_index,
        reduction=reduction,
        weight=weight,
        binary=False,
        name="margin_smoothing_loss",
    )


def confidence_smoothing_eps(
    logits: Tensor,
    target: Tensor,
    margin: float = 0.2,
    power: float = 2.0,
    *,
    ignore_index: int = -100,
) -> Tensor:
    """The smoothing ``eps_i`` that ``confidence_smoothing_loss`` uses at each position (the
    target's shape, 0 at ignored positions, no gradient): see its formula."""
    margin, power = check_confidence_margin(margin), check_power(power)
    check_ignore_index(ignore_index)
    positions = prepare(logits, target, ignore_index=ignore_index, weight=None, binary=False)
    if positions.index is None:
        raise ValueError(
            "confidence_smoothing_eps needs class indices as target (its eps is built from "
            "p_y); got class probabilities of the logits' shape"
        )
    k = logits.shape[-1]
    spec = LossSpec("confidence", {"margin": margin, "power": power})
    MODES["confidence"].check(spec, positions.mask, k)
    cap = confidence_cap(k, margin)
    dtype = compute_dtype(logits)
    flat = logits.detach().reshape(-1, k)
    labels = positions.index.reshape(-1)
    eps = torch.zeros(flat.shape[0], dtype=dtype, device=logits.device)
    rows = default_chunk_rows(k, dtype, "ls", logits.device)
    with torch.no_grad():
        for a in range(0, flat.shape[0], rows):
            chunk = flat[a : a + rows].to(dtype)
            eps[a : a + rows] = confidence_eps(chunk, labels[a : a + rows], cap, power)
    eps = eps.view(positions.mask.shape)
    return torch.where(positions.mask, eps, torch.zeros_like(eps))


def confidence_smoothing_loss(
    logits: Tensor,
    target: Tensor,
    margin: float = 0.2,
    power: float = 2.0,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
) -> Tensor:
    """Label smoothing with ``eps`` per position from the model's confidence (AdaLabel).

    Wang, Zheng, Jiang and Huang, "Diversifying Dialog Generation via Adaptive Label
    Smoothing", ACL 2021; the formula of the authors' code (github.com/lemon234071/AdaLabel,
    ``onmt/utils/loss.py``, ``AdaLabLoss._get_epsilon`` and ``forward``). With
    ``p = softmax(s)`` taken as a constant (detached), ``p_max = max_k p_k``:

        eps_i = (p_y / p_max) ** power * min(1 - p_max, 1 / (1 + max_k v_k) - margin)
        q_i   = (1 - eps_i) * onehot(y) + eps_i * v
        loss  = H(q_i, p_i) = (1 - eps_i) * CE(s, y) + eps_i * H(v, p)

    ``v`` is uniform over the K - 1 classes other than y (``v_y = 0``, ``max v = 1/(K-1)``),
    so the cap is ``(K - 1) / K - margin``. The paper's v is the prediction of an auxiliary
    bi-directional decoder; here it is uniform, which needs no extra model. Confident
    predictions (``p_max -> 1``) and wrong ones (``p_y << p_max``) get little smoothing;
    uncertain correct ones the most. Defaults ``margin = 0.2``, ``power = 2`` are the code's
    (``margin``, ``alpha_param``). The value is a cross-entropy (the code returns the KL
    ``KL(q || p) = H(q, p) - H(q)``: the same gradient). Multiclass only (no binary form);
    ``target`` holds class indices. ``mean`` averages over the positions that count.
    """
    spec = LossSpec(
        "confidence", {"margin": check_confidence_margin(margin), "power": check_power(power)}
    )
    return spec_loss(
        logits,
        target,
        spec,
        ignore_index=ignore_index,
        reduction=reduction,
        weight=weight,
        binary=False,
        name="confidence_smoothing_loss",
    )
