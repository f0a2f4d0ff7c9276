"""Label relaxation source (Lienen and Huellermeier, AAAI 2021)."""

from __future__ import annotations

from softlabel.targets._base import HyperParameter, TargetSource, hyper_parameter


class LabelRelaxation(TargetSource):
    """``loss = KL(p_r || p)`` where ``p_y < 1 - alpha``, else 0; p_r_y = 1 - alpha and
    p_r_k = alpha p_k / (1 - p_y) (mode ``relax``; see
    ``softlabel.functional.label_relaxation_loss``)."""

    name = "relax"
    reference = None
    mode = "relax"
    alpha = hyper_parameter()

    def __init__(self, alpha: HyperParameter = 0.1) -> None:
        super().__init__(alpha=alpha)
