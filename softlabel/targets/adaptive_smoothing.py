"""Adaptive label smoothing: margin-based label smoothing (MbLS; Liu et al., CVPR 2022)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from softlabel.functional.adaptive_smoothing import (
    check_margin,
    check_penalty,
    margin_smoothing_loss,
)
from softlabel.targets._base import HyperParameter, TargetSource, hyper_parameter


class MarginSmoothing(TargetSource):
    """``loss = CE(s, y) + penalty * sum_k max(0, max_j s_j - s_k - margin)``.

    Label smoothing whose strength adapts to each sample's confidence: only logit distances
    to the top logit larger than ``margin`` are penalised (Liu et al., "The Devil is in the
    Margins", CVPR 2022). Needs no reference. See ``margin_smoothing_loss``.
    """

    name = "ls_adaptive"
    reference = None
    checks = {"margin": check_margin, "penalty": check_penalty}
    margin = hyper_parameter()
    penalty = hyper_parameter()

    def __init__(self, margin: HyperParameter = 10.0, penalty: HyperParameter = 0.1) -> None:
        super().__init__(margin=margin, penalty=penalty)

    def _loss(self, logits: Tensor, target: Tensor, reference: None, **options: Any) -> Tensor:
        if options.pop("binary", None):
            raise ValueError("MarginSmoothing needs multiclass logits (..., K), got binary=True")
        return margin_smoothing_loss(logits, target, self.margin, self.penalty, **options)
