"""Teacher-free KD (Tf-KD_reg): distillation from a hand-made virtual teacher, no model."""

from __future__ import annotations

from softlabel.kernels.checks import check_correct_prob
from softlabel.targets._base import HyperParameter, TargetSource, hyper_parameter


class VirtualTeacher(TargetSource):
    """``loss = (1 - alpha) * CE(s, y) + alpha * T^2 * KL(softmax(log q / T) || softmax(s/T))``.

    q puts ``correct_prob`` on the true class and ``(1 - correct_prob)/(K - 1)`` on each
    other class (Yuan et al., CVPR 2020, Tf-KD_reg); ``correct_prob`` must lie in (1/K, 1).
    Needs no reference (mode ``virtual_teacher``). See ``virtual_teacher_loss``.
    """

    name = "tf_kd"
    reference = None
    mode = "virtual_teacher"
    checks = {"correct_prob": check_correct_prob}
    correct_prob = hyper_parameter()
    temperature = hyper_parameter()
    alpha = hyper_parameter()

    def __init__(
        self,
        correct_prob: HyperParameter = 0.9,
        temperature: HyperParameter = 20.0,
        alpha: HyperParameter = 0.9,
    ) -> None:
        super().__init__(correct_prob=correct_prob, temperature=temperature, alpha=alpha)
