"""Target sources: each defines ``w`` and ``soft_term`` in
``loss = (1 - w) * hard_CE + w * soft_term`` and holds its hyper-parameters as schedules."""

from softlabel.functional.topk import TopKLogits
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
]
