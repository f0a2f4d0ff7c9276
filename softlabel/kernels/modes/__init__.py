"""The engine's modes, one file per method; ``MODES`` maps each name to its ``Mode``."""

from softlabel.kernels.modes.adaptive_smoothing import ConfidenceSmoothing, MarginSmoothing
from softlabel.kernels.modes.base import Mode
from softlabel.kernels.modes.decoupled import Decoupled
from softlabel.kernels.modes.distillation import Distillation
from softlabel.kernels.modes.relaxation import Relaxation
from softlabel.kernels.modes.self_correction import SelfCorrection
from softlabel.kernels.modes.smoothing import Hard, Smoothing
from softlabel.kernels.modes.universal import UniversalLogitDistillation
from softlabel.kernels.modes.virtual_teacher import VirtualTeacher

#: name -> mode, every mode the engine runs
MODES: dict[str, Mode] = {
    mode.name: mode
    for mode in (
        Hard(),
        Smoothing(),
        Distillation(),
        SelfCorrection(),
        Decoupled(),
        Relaxation(),
        MarginSmoothing(),
        ConfidenceSmoothing(),
        VirtualTeacher(),
        UniversalLogitDistillation(),
    )
}

__all__ = ["MODES", "Mode"]
