"""Stateless loss functions. Class dimension last; binary when logits and target share a shape.

Every function takes keyword-only ``ignore_index``, ``reduction`` (mean | sum | none) and a
per-class ``weight`` (sample i's loss times ``weight[y_i]``; ``mean`` divides by their sum).
Half-precision inputs are computed (and returned) in float32.
"""

from softlabel.functional.adaptive_smoothing import (
    confidence_smoothing_loss,
    margin_smoothing_loss,
)
from softlabel.functional.cross_entropy import cross_entropy_loss
from softlabel.functional.decoupled import decoupled_distillation_loss
from softlabel.functional.dist import dist_loss
from softlabel.functional.distillation import distillation_loss
from softlabel.functional.linear import (
    linear_cross_entropy_loss,
    linear_decoupled_distillation_loss,
    linear_distillation_loss,
    linear_label_smoothing_loss,
    linear_self_correction_loss,
)
from softlabel.functional.relaxation import label_relaxation_loss
from softlabel.functional.self_correction import self_correction_loss
from softlabel.functional.smoothing import label_smoothing_loss
from softlabel.functional.topk import TopKLogits, topk_distillation_loss
from softlabel.functional.universal import uld_loss
from softlabel.functional.virtual_teacher import virtual_teacher_loss

__all__ = [
    "cross_entropy_loss",
    "label_smoothing_loss",
    "distillation_loss",
    "topk_distillation_loss",
    "TopKLogits",
    "decoupled_distillation_loss",
    "label_relaxation_loss",
    "self_correction_loss",
    "virtual_teacher_loss",
    "margin_smoothing_loss",
    "confidence_smoothing_loss",
    "dist_loss",
    "uld_loss",
    "linear_cross_entropy_loss",
    "linear_label_smoothing_loss",
    "linear_distillation_loss",
    "linear_decoupled_distillation_loss",
    "linear_self_correction_loss",
]
