"""ReLoop self-correction source: the previous model's probabilities."""

from __future__ import annotations

from softlabel.targets._base import HyperParameter, TargetSource, hyper_parameter


class PreviousModel(TargetSource):
    """``loss = (1 - alpha) * CE + alpha * max(0, p_prev[y] - p[y])`` (ReLoop, Cai et al.,
    SIGIR 2022; mode ``reloop``; binary: see ``self_correction_loss``).

    ``reference`` is the previous model's probabilities: ``(..., K)``, or ``(...)`` = P(y=1)
    for binary.
    """

    name = "reloop"
    reference = "previous_probs"
    mode = "reloop"
    alpha = hyper_parameter()

    def __init__(self, alpha: HyperParameter = 0.5) -> None:
        super().__init__(alpha=alpha)
