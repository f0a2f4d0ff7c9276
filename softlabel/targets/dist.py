"""DIST source: inter- and intra-class correlation with the teacher's probabilities."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from softlabel.functional.dist import check_beta, check_gamma, dist_loss
from softlabel.targets._base import HyperParameter, TargetSource, hyper_parameter


class DIST(TargetSource):
    """``loss = (1 - alpha) * CE(s, y) + alpha * T^2 * (beta * L_inter + gamma * L_intra)``.

    ``L_inter`` and ``L_intra`` are one minus the mean Pearson correlation of
    ``softmax(s/T)`` and ``softmax(t/T)`` per position (over classes) and per class (over the
    batch) (Huang et al., NeurIPS 2022). ``L_intra`` is a batch-level term: see
    ``dist_loss``. ``reference`` is the teacher's logits, of the student's shape. The
    paper's loss ``CE + beta L_inter + gamma L_intra`` is this loss with ``alpha=0.5``,
    times 2.
    """

    name = "dist"
    reference = "teacher_logits"
    mode = None
    fallback = (
        "its intra-class term correlates each class's probabilities over the whole batch, so "
        "the loss is not a sum of per-row terms"
    )
    checks = {"beta": check_beta, "gamma": check_gamma}
    temperature = hyper_parameter()
    alpha = hyper_parameter()
    beta = hyper_parameter()
    gamma = hyper_parameter()

    def __init__(
        self,
        temperature: HyperParameter = 1.0,
        alpha: HyperParameter = 0.5,
        beta: HyperParameter = 1.0,
        gamma: HyperParameter = 1.0,
    ) -> None:
        super().__init__(temperature=temperature, alpha=alpha, beta=beta, gamma=gamma)

    def _loss(
        self, logits: Tensor, target: Tensor | None, reference: Tensor, **options: Any
    ) -> Tensor:
        if options.pop("binary", None):
            raise ValueError("DIST needs multiclass logits (..., K), got binary=True")
        return dist_loss(
            logits,
            reference,
            target,
            self.temperature,
            self.alpha,
            self.beta,
            self.gamma,
            **options,
        )
