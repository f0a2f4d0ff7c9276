"""softlabel: label smoothing, knowledge distillation and ReLoop self-correction."""

__version__ = "0.1.0"
