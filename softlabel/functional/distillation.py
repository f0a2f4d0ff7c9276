"""Knowledge distillation (Hinton et al.): hard CE plus a T^2-scaled divergence to the
teacher (forward or reverse KL, generalized JSD, total variation, DistiLLM's skew KLs),
optionally on standardized logits (Sun et al., CVPR 2024), from dense teacher logits or a
top-k reference."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from softlabel.functional._engine import spec_loss
from softlabel.kernels.checks import (
    DEFAULT_BETA,
    DEFAULT_SKEW,
    check_alpha,
    check_divergence_settings,
    check_flag,
    check_temperature,
)
from softlabel.kernels.references import TopKLogits
from softlabel.kernels.spec import LossSpec


def distillation_spec(
    temperature: Any,
    alpha: Any,
    divergence: Any = "forward_kl",
    beta: Any = DEFAULT_BETA,
    skew: Any = DEFAULT_SKEW,
    standardize: Any = False,
) -> LossSpec:
    """The ``kd`` spec of these settings, each checked by its rule."""
    divergence, beta, skew = check_divergence_settings(divergence, beta, skew)
    return LossSpec(
        "kd",
        {
            "temperature": check_temperature(temperature),
            "alpha": check_alpha(alpha),
            "divergence": divergence,
            "beta": beta,
            "skew": skew,
            "standardize": check_flag("standardize", standardize),
        },
    )


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | TopKLogits,
    target: Tensor | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
    *,
    divergence: str = "forward_kl",
    beta: float = DEFAULT_BETA,
    skew: float = DEFAULT_SKEW,
    standardize: bool = False,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    binary: bool | None = None,
) -> Tensor:
    """``(1 - alpha) * CE(s, y) + alpha * T^2 * D(p_t^T, p_s^T)``, p^T = softmax(logits / T).

    ``divergence``: ``"forward_kl"`` KL(p_t^T || p_s^T) (Hinton et al., 2015);
    ``"reverse_kl"`` KL(p_s^T || p_t^T); ``"jsd"`` the generalized JSD of GKD (Agarwal et al.,
    ICLR 2024) as TRL computes it: beta KL(p_t^T || M) + (1 - beta) KL(p_s^T || M),
    M = beta p_t^T + (1 - beta) p_s^T, with beta = 0 giving KL(p_t^T || p_s^T) and beta = 1
    KL(p_s^T || p_t^T); ``"tvd"`` 1/2 sum_k |p_t^T - p_s^T|; ``"skew_forward_kl"``
    KL(p_t^T || a p_t^T + (1 - a) p_s^T) and ``"skew_reverse_kl"``
    KL(p_s^T || (1 - a) p_t^T + a p_s^T) with a = ``skew`` in [0, 1) (DistiLLM, Ko et al.,
    ICML 2024; a = 0 gives the forward and the reverse KL). Every divergence is multiplied by
    T^2. ``beta`` is only used by the JSD, ``skew`` by the skew divergences.
    ``standardize=True``: logit standardization (Sun et al., CVPR 2024), student and teacher
    logits z-scored per position, (z - mean) / (std + 1e-7) with Bessel's correction, before
    dividing by T; the CE stays on the raw logits; the student's z-scoring is differentiated
    through.

    ``teacher_logits``: dense logits of the student's shape, or a top-k reference
    ``TopKLogits`` (see ``topk_distillation_loss``). The divergence is summed over classes per
    position, so ``mean`` is the batchmean over the positions that count. Binary (one logit
    per position): the Bernoulli forms of every divergence between ``sigmoid(t/T)`` and
    ``sigmoid(s/T)``, times T^2 (no standardization: one logit has no spread). Teacher logits
    get no gradient and must be finite. ``target=None`` needs ``alpha=1`` (pure
    distillation); then every position counts. ``binary`` tells a binary task from a
    multiclass one (default: binary only for 1-D logits); ``target`` may also hold class
    probabilities ``(..., K)`` for the hard term.
    """
    spec = distillation_spec(temperature, alpha, divergence, beta, skew, standardize)
    return spec_loss(
        student_logits,
        target,
        spec,
        teacher_logits,
        ignore_index=ignore_index,
        reduction=reduction,
        weight=weight,
        binary=binary,
        logits_name="student_logits",
        name="distillation_loss",
    )
