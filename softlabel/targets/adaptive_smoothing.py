"""Adaptive label smoothing: margin-based (MbLS; Liu et al., CVPR 2022) and confidence-adaptive
eps per position (AdaLabel; Wang et al., ACL 2021)."""

from __future__ import annotations

from softlabel.kernels.checks import (
    check_confidence_margin,
    check_margin,
    check_penalty,
    check_power,
)
from softlabel.targets._base import HyperParameter, TargetSource, hyper_parameter


class MarginSmoothing(TargetSource):
    """``loss = CE(s, y) + penalty * sum_k max(0, max_j s_j - s_k - margin)``.

    Label smoothing whose strength adapts to each sample's confidence: only logit distances
    to the top logit larger than ``margin`` are penalised (Liu et al., "The Devil is in the
    Margins", CVPR 2022). Needs no reference (mode ``margin``). See
    ``margin_smoothing_loss``.
    """

    name = "ls_adaptive"
    reference = None
    mode = "margin"
    checks = {"margin": check_margin, "penalty": check_penalty}
    margin = hyper_parameter()
    penalty = hyper_parameter()

    def __init__(self, margin: HyperParameter = 10.0, penalty: HyperParameter = 0.1) -> None:
        super().__init__(margin=margin, penalty=penalty)


class ConfidenceSmoothing(TargetSource):
    """``loss = (1 - eps_i) * CE(s, y) + eps_i * H(v, p)``, eps per position from the model.

    ``eps_i = (p_y / p_max) ** power * min(1 - p_max, (K - 1) / K - margin)`` from the detached
    prediction, ``v`` uniform over the other classes: AdaLabel's adaptive eps (Wang et al.,
    "Diversifying Dialog Generation via Adaptive Label Smoothing", ACL 2021) with a uniform
    smoothing distribution. Needs no reference (mode ``confidence``). See
    ``confidence_smoothing_loss``.
    """

    name = "ls_confidence"
    reference = None
    mode = "confidence"
    checks = {"margin": check_confidence_margin, "power": check_power}
    margin = hyper_parameter()
    power = hyper_parameter()

    def __init__(self, margin: HyperParameter = 0.2, power: HyperParameter = 2.0) -> None:
        super().__init__(margin=margin, power=power)
