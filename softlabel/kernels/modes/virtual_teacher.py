"""Mode ``virtual_teacher``: teacher-free KD against a hand-made teacher (Tf-KD_reg; Yuan et
al., CVPR 2020).

The virtual teacher puts ``a = correct_prob`` on the true class and (1 - a) / (K - 1) on every
other class; the loss is the forward-KL distillation of mode ``kd`` against its logits
log q: (1 - alpha) CE + alpha T^2 KL(softmax(log q / T) || softmax(s / T)). The teacher's
rows are made chunk by chunk from the labels (one work buffer), never as an (N, K) tensor.
Binary: teacher logit +-log(a / (1 - a)).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from softlabel.kernels.checks import check_alpha, check_correct_prob, check_temperature
from softlabel.kernels.modes.base import Mode
from softlabel.kernels.modes.distillation import Distillation, kd_chunk, kd_grad_scale
from softlabel.kernels.modes.smoothing import ce_ls_chunk


def virtual_teacher_logits_into(y: Tensor, correct_prob: float, out: Tensor) -> Tensor:
    """Write log q into ``out`` (rows, K): log a at the labels ``y`` (rows, 1), log((1 - a) /
    (K - 1)) elsewhere."""
    other = math.log((1.0 - correct_prob) / (out.shape[1] - 1))
    return out.fill_(other).scatter_(1, y, math.log(correct_prob))


class VirtualTeacher(Mode):
    """``virtual_teacher``: params ``correct_prob`` (in (1/K, 1)), ``temperature``,
    ``alpha``; needs class indices."""

    name = "virtual_teacher"
    defaults = {"correct_prob": 0.9, "temperature": 20.0, "alpha": 0.9}
    checks = {
        "correct_prob": check_correct_prob,
        "temperature": check_temperature,
        "alpha": check_alpha,
    }
    soft_target = False
    has_binary = True

    def work_buffers(self, spec) -> int:
        return 3  # the teacher's rows and the two buffers of kd_chunk

    def grad_scale(self, spec) -> float:
        return kd_grad_scale(spec.temperature, spec.alpha) if spec.alpha > 0.0 else 1.0

    def check(self, spec, mask, num_classes) -> None:
        low = 1.0 / num_classes
        if not low < spec.correct_prob < 1.0:
            raise ValueError(
                f"correct_prob must be in (1/K, 1) = ({low:.6g}, 1) for K={num_classes}, got "
                f"{spec.correct_prob!r}"
            )

    def chunk(self, s, y, q, g, t, prev, work, spec, state) -> Tensor:
        rows = s.shape[0]
        if spec.alpha == 0.0:
            return ce_ls_chunk(s, y, g, 0.0, None, 1.0, None)
        teacher = virtual_teacher_logits_into(y, spec.correct_prob, work[0][:rows])
        return kd_chunk(
            s, y, g, teacher, work[1][:rows], work[2][:rows], spec.temperature, spec.alpha
        )

    def reference(self, s, labels, spec, teacher=None) -> Tensor:
        teacher = virtual_teacher_logits_into(
            labels.unsqueeze(1), spec.correct_prob, torch.empty_like(s)
        )
        return Distillation().reference(s, labels, _as_kd(spec), teacher)

    def binary(self, logits, target, spec, reference) -> Tensor:
        a = spec.correct_prob
        teacher = (target * 2 - 1) * math.log(a / (1.0 - a))
        return Distillation().binary(logits, target, _as_kd(spec), teacher)


def _as_kd(spec):
    """The ``kd`` spec of the same temperature and alpha (forward KL)."""
    params = {key: spec.params[key] for key in ("temperature", "alpha")}
    return type(spec)("kd", {**Distillation.defaults, **params}, soft_target=spec.soft_target)
