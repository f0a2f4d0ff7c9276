"""Knowledge distillation source: the teacher's temperature-softened probabilities."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from softlabel.functional import distillation_loss
from softlabel.functional._validation import check_beta, check_divergence, check_flag
from softlabel.functional.topk import TopKLogits, topk_distillation_loss
from softlabel.targets._base import HyperParameter, TargetSource, hyper_parameter

_SUFFIX = {"forward_kl": "", "reverse_kl": "_reverse", "jsd": "_jsd", "tvd": "_tvd"}


class Teacher(TargetSource):
    """``loss = (1 - alpha) * CE(s, y) + alpha * T^2 * D(softmax(t/T), softmax(s/T))``.

    ``divergence``: ``"forward_kl"`` (Hinton et al.), ``"reverse_kl"``, ``"jsd"`` (the
    generalized JSD of GKD with mixture weight ``beta``, a hyper-parameter that may follow a
    schedule) or ``"tvd"``; ``standardize=True`` z-scores both logits per position first (Sun
    et al., CVPR 2024). See ``softlabel.functional.distillation_loss``. ``reference`` is the
    teacher's logits, of the student's shape, or a top-k reference ``TopKLogits`` (a top-k
    teacher cache with ``tail="bucket"``): then the loss is
    ``softlabel.functional.topk_distillation_loss`` on the k kept ids plus one tail bucket
    (not with ``standardize=True``, which needs every logit). The name (recorded as the method) is ``kd``
    plus ``_reverse``, ``_jsd`` or ``_tvd``, plus ``_std`` when standardizing.
    """

    name = "kd"
    reference = "teacher_logits"
    checks: ClassVar = {"beta": check_beta}
    temperature = hyper_parameter()
    alpha = hyper_parameter()
    beta = hyper_parameter()

    def __init__(
        self,
        temperature: HyperParameter = 4.0,
        alpha: HyperParameter = 0.9,
        divergence: str = "forward_kl",
        beta: HyperParameter = 0.5,
        standardize: bool = False,
    ) -> None:
        self.divergence = check_divergence(divergence)
        self.standardize = check_flag("standardize", standardize)
        if divergence == "jsd":
            super().__init__(temperature=temperature, alpha=alpha, beta=beta)
        else:
            if beta != 0.5:
                raise ValueError(
                    f"beta is only used by divergence='jsd', got beta={beta!r} with "
                    f"divergence={divergence!r}"
                )
            super().__init__(temperature=temperature, alpha=alpha)
        self.name = "kd" + _SUFFIX[divergence] + ("_std" if standardize else "")

    def _loss(
        self, logits: Tensor, target: Tensor | None, reference: Tensor | TopKLogits, **options: Any
    ) -> Tensor:
        if isinstance(reference, TopKLogits):
            return self._topk_loss(logits, target, reference, **options)
        extra: dict[str, Any] = {}
        if self.divergence != "forward_kl":
            extra["divergence"] = self.divergence
        if self.divergence == "jsd":
            extra["beta"] = self.beta
        if self.standardize:
            extra["standardize"] = True
        return distillation_loss(
            logits, reference, target, self.temperature, self.alpha, **extra, **options
        )

    def _topk_loss(
        self,
        logits: Tensor,
        target: Tensor | None,
        reference: TopKLogits,
        *,
        binary: bool | None = None,
        **options: Any,
    ) -> Tensor:
        if self.standardize:
            raise ValueError(
                "standardize=True needs the teacher's logits over every class (it z-scores "
                "them), but the reference is a top-k TopKLogits (k ids plus a tail); use "
                "standardize=False, or a dense cache / live teacher (teacher.tail=uniform "
                "gives dense logits rebuilt from a top-k cache)"
            )
        if binary:
            raise ValueError(
                "binary=True: a top-k reference (TopKLogits) needs multiclass logits (..., V)"
            )
        extra: dict[str, Any] = {"divergence": self.divergence}
        if self.divergence == "jsd":
            extra["beta"] = self.beta
        return topk_distillation_loss(
            logits, reference, target, self.temperature, self.alpha, **extra, **options
        )

    def __repr__(self) -> str:
        arguments = ", ".join(f"{key}={value!r}" for key, value in self._schedules.items())
        if self.divergence != "forward_kl":
            arguments += f", divergence={self.divergence!r}"
        if self.standardize:
            arguments += ", standardize=True"
        return f"Teacher({arguments})"
