"""softlabel: label smoothing, knowledge distillation and ReLoop self-correction."""

from softlabel import functional, schedules, targets
from softlabel.linear_loss import LinearSoftTargetLoss
from softlabel.loss import SoftTargetLoss

__version__ = "0.1.0"

__all__ = [
    "SoftTargetLoss",
    "LinearSoftTargetLoss",
    "functional",
    "schedules",
    "targets",
    "__version__",
]
