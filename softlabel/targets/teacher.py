"""Knowledge distillation source: the teacher's temperature-softened probabilities."""

from __future__ import annotations

from typing import Any, ClassVar

from softlabel.kernels.checks import (
    DEFAULT_BETA,
    DEFAULT_SKEW,
    check_beta,
    check_divergence,
    check_flag,
    check_skew,
)
from softlabel.targets._base import HyperParameter, TargetSource, hyper_parameter

#: the method name of each divergence (recorded in metrics.json): kd + suffix
_SUFFIX = {
    "forward_kl": "",
    "reverse_kl": "_reverse",
    "jsd": "_jsd",
    "tvd": "_tvd",
    "skew_forward_kl": "_skew",
    "skew_reverse_kl": "_skew_reverse",
}

#: the divergence's own parameter, a hyper-parameter of the source where it is read
_OWN = {"jsd": "beta", "skew_forward_kl": "skew", "skew_reverse_kl": "skew"}


class Teacher(TargetSource):
    """``loss = (1 - alpha) * CE(s, y) + alpha * T^2 * D(softmax(t/T), softmax(s/T))``.

    ``divergence``: ``"forward_kl"`` (Hinton et al.), ``"reverse_kl"``, ``"jsd"`` (the
    generalized JSD of GKD with mixture weight ``beta``), ``"tvd"``, ``"skew_forward_kl"`` or
    ``"skew_reverse_kl"`` (DistiLLM, with ``skew``); ``beta`` and ``skew`` are
    hyper-parameters that may follow a schedule, each set only for its divergence.
    ``standardize=True`` z-scores both logits per position first (Sun et al., CVPR 2024). See
    ``softlabel.functional.distillation_loss``; mode ``kd``. ``reference`` is the teacher's
    logits, of the student's shape, or a top-k reference ``TopKLogits`` (a top-k teacher
    cache with ``tail="bucket"``): then the loss is on the k kept ids plus one tail bucket
    (not with ``standardize=True``, which needs every logit). The name (recorded as the
    method) is ``kd`` plus ``_reverse``, ``_jsd``, ``_tvd``, ``_skew`` or ``_skew_reverse``,
    plus ``_std`` when standardizing.
    """

    name = "kd"
    reference = "teacher_logits"
    mode = "kd"
    checks: ClassVar = {"beta": check_beta, "skew": check_skew}
    temperature = hyper_parameter()
    alpha = hyper_parameter()
    beta = hyper_parameter()
    skew = hyper_parameter()

    def __init__(
        self,
        temperature: HyperParameter = 4.0,
        alpha: HyperParameter = 0.9,
        divergence: str = "forward_kl",
        beta: HyperParameter = DEFAULT_BETA,
        standardize: bool = False,
        skew: HyperParameter = DEFAULT_SKEW,
    ) -> None:
        self.divergence = check_divergence(divergence)
        self.standardize = check_flag("standardize", standardize)
        own = {"temperature": temperature, "alpha": alpha}
        for key, value, default in (("beta", beta, DEFAULT_BETA), ("skew", skew, DEFAULT_SKEW)):
            if _OWN.get(divergence) == key:
                own[key] = value
            elif value != default:
                users = " or ".join(repr(d) for d, k in _OWN.items() if k == key)
                raise ValueError(
                    f"{key} is only used by divergence={users}, got {key}={value!r} with "
                    f"divergence={divergence!r}"
                )
        super().__init__(**own)
        self.name = "kd" + _SUFFIX[divergence] + ("_std" if standardize else "")

    @property
    def binary(self) -> bool:
        """Binary tasks have the Bernoulli forms, but no standardization (one logit)."""
        return not self.standardize

    def accepts(self, kind: str) -> bool:
        """Every teacher reference, but a top-k one not when standardizing (it z-scores the
        teacher's logits over every class)."""
        return super().accepts(kind) and not (self.standardize and kind == "topk")

    def _spec_params(self) -> dict[str, Any]:
        values = self.values()
        return {
            "temperature": values["temperature"],
            "alpha": values["alpha"],
            "divergence": self.divergence,
            "beta": values.get("beta", DEFAULT_BETA),
            "skew": values.get("skew", DEFAULT_SKEW),
            "standardize": self.standardize,
        }

    def __repr__(self) -> str:
        arguments = ", ".join(f"{key}={value!r}" for key, value in self._schedules.items())
        if self.divergence != "forward_kl":
            arguments += f", divergence={self.divergence!r}"
        if self.standardize:
            arguments += ", standardize=True"
        return f"Teacher({arguments})"
