"""Universal Logit Distillation source: a teacher with another tokenizer (Boizard et al., 2024),
plain or hybrid (GOLD)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from softlabel.kernels.checks import check_flag, check_loss_weight, check_vocabulary_map
from softlabel.targets._base import HyperParameter, TargetSource, hyper_parameter


class UniversalLogitDistillation(TargetSource):
    """``loss = (1 - alpha) CE(s, y) + alpha sum_i |sort(p_s)_i - sort(p_t)_i|`` (mode ``uld``).

    ``p = softmax(logits / T)``, each over its own vocabulary, sorted decreasingly, the
    shorter padded with zeros: the teacher may use another tokenizer (its rows aligned to the
    student's positions). ``hybrid=True`` (GOLD): ``matched_weight * KL`` on the tokens whose
    strings both vocabularies hold, plus ``unmatched_weight * ULD`` on the others; the map of
    those tokens is set once by ``set_vocabulary_map(pairs)`` (the training app builds it from
    the two tokenizers); a weight left None takes GOLD's M / V_t and 1 - M / V_t. Reads the
    teacher's logits (dense, a live head, or a top-k cache for the plain form). See
    ``softlabel.functional.uld_loss``.
    """

    name = "uld"
    reference = "teacher_logits"
    mode = "uld"
    temperature = hyper_parameter()
    alpha = hyper_parameter()

    def __init__(
        self,
        temperature: HyperParameter = 1.0,
        alpha: HyperParameter = 0.5,
        hybrid: bool = False,
        matched_weight: float | None = None,
        unmatched_weight: float | None = None,
    ) -> None:
        super().__init__(temperature=temperature, alpha=alpha)
        self.hybrid = check_flag("hybrid", hybrid)
        weights = {"matched_weight": matched_weight, "unmatched_weight": unmatched_weight}
        for key, value in weights.items():
            if value is not None and not hybrid:
                raise ValueError(f"{key} is only used with hybrid=True, got {key}={value!r}")
        self.matched_weight = (
            None if matched_weight is None else check_loss_weight("matched_weight", matched_weight)
        )
        self.unmatched_weight = (
            None
            if unmatched_weight is None
            else check_loss_weight("unmatched_weight", unmatched_weight)
        )
        self._matched: Tensor | None = None
        if hybrid:
            self.name = "uld_hybrid"

    @property
    def vocabulary_map(self) -> Tensor | None:
        """The (M, 2) pairs (student id, teacher id) of the hybrid form, or None."""
        return self._matched

    def set_vocabulary_map(self, pairs: Any) -> None:
        """Set the matched tokens of the hybrid form: (M, 2) pairs (student id, teacher id)."""
        if not self.hybrid:
            raise ValueError("set_vocabulary_map is for hybrid=True; this ULD is the plain form")
        self._matched = check_vocabulary_map(pairs)

    def accepts(self, kind: str) -> bool:
        """Dense logits or a live head; a top-k reference for the plain form only."""
        return super().accepts(kind) and not (self.hybrid and kind == "topk")

    def _spec_params(self) -> dict[str, Any]:
        if self.hybrid and self._matched is None:
            raise ValueError(
                "UniversalLogitDistillation(hybrid=True) has no vocabulary map: call "
                "set_vocabulary_map(pairs) with the (student id, teacher id) pairs of the tokens "
                "both tokenizers hold"
            )
        return {
            **self.values(),
            "matched": self._matched,
            "matched_weight": self.matched_weight,
            "unmatched_weight": self.unmatched_weight,
        }

    def __repr__(self) -> str:
        arguments = ", ".join(f"{key}={value!r}" for key, value in self._schedules.items())
        if self.hybrid:
            arguments += (
                f", hybrid=True, matched_weight={self.matched_weight!r}, "
                f"unmatched_weight={self.unmatched_weight!r}"
            )
        return f"UniversalLogitDistillation({arguments})"
