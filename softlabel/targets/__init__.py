"""Target sources: one soft-label method each, behind the one ``SoftTargetLoss``.

A source holds its method's hyper-parameters (numbers or schedules of training progress)
and says what it needs and can do (``TargetSource``: its engine mode and spec, the reference
it reads, binary and linear-head support). Every loss is the method's own formula, given in
its class docstring and in docs/losses.md: some are ``(1 - w) hard + w soft`` (LS, KD,
ReLoop, Tf-KD, ULD), others are not (DKD's weighted TCKD and NCKD, label relaxation's KL to
a credal set, MbLS's margin penalty, DIST's correlations).
"""

from softlabel.kernels.references import TopKLogits
from softlabel.targets._base import TargetSource
from softlabel.targets.adaptive_smoothing import ConfidenceSmoothing, MarginSmoothing
from softlabel.targets.decoupled import DecoupledTeacher
from softlabel.targets.dist import DIST
from softlabel.targets.hard import Hard
from softlabel.targets.online_smoothing import OnlineLabelSmoothing
from softlabel.targets.previous_model import PreviousModel
from softlabel.targets.relaxation import LabelRelaxation
from softlabel.targets.smoothing import ClassPrior, UniformPrior
from softlabel.targets.teacher import Teacher
from softlabel.targets.universal import UniversalLogitDistillation
from softlabel.targets.virtual_teacher import VirtualTeacher

__all__ = [
    "TargetSource",
    "Hard",
    "UniformPrior",
    "ClassPrior",
    "Teacher",
    "TopKLogits",
    "DecoupledTeacher",
    "LabelRelaxation",
    "PreviousModel",
    "OnlineLabelSmoothing",
    "VirtualTeacher",
    "MarginSmoothing",
    "ConfidenceSmoothing",
    "DIST",
    "UniversalLogitDistillation",
]
