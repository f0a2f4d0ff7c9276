"""Universal Logit Distillation (Boizard et al., 2024): distillation from a teacher with
another tokenizer, by the L1 distance between the sorted probability vectors."""

from __future__ import annotations

from torch import Tensor

from softlabel.functional._engine import spec_loss
from softlabel.kernels.checks import check_alpha, check_temperature
from softlabel.kernels.references import TopKLogits
from softlabel.kernels.spec import LossSpec


def uld_loss(
    logits: Tensor,
    target: Tensor | None,
    teacher_logits: Tensor | TopKLogits,
    *,
    temperature: float = 1.0,
    alpha: float = 0.5,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    """``(1 - alpha) CE(logits, target) + alpha sum_i |sort(p_s)_i - sort(p_t)_i|``.

    Boizard, Haddad, Hudelot and Colombo, "Towards Cross-Tokenizer Distillation: the
    Universal Logit Distillation Loss for LLMs", 2024. ``p_s = softmax(logits / T)`` over
    the student's vocabulary (..., V_s), ``p_t = softmax(teacher_logits / T)`` over the
    teacher's own (..., V_t), V_t any size: each sorted in decreasing order, the shorter padded
    with zeros; no T^2 factor (an L1 distance between probability vectors). The teacher's
    positions must already be aligned to the student's (one teacher row per student
    position). ``teacher_logits`` may be a top-k ``TopKLogits`` (ids of the teacher's
    vocabulary; only the sorted probabilities are read): then the distance is taken on
    k + 1 buckets, the k largest probabilities and the rest (see
    ``softlabel.kernels.modes.universal``). ``mean`` averages over the positions whose target
    is not ``ignore_index``; ``target=None`` needs ``alpha=1``. Multiclass only.
    """
    spec = LossSpec(
        "uld",
        {
            "temperature": check_temperature(temperature),
            "alpha": check_alpha(alpha),
            "matched": None,
            "matched_weight": None,
            "unmatched_weight": None,
        },
    )
    return spec_loss(
        logits,
        target,
        spec,
        teacher_logits,
        ignore_index=ignore_index,
        reduction=reduction,
        binary=False,
        logits_name="logits",
        name="uld_loss",
    )
