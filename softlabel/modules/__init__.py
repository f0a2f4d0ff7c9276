"""Lightning layer: the training module, reference providers, metrics and checkpoint loading.

Importing this package imports Lightning and torchmetrics; the entry points import it only
inside a job.
"""

from softlabel.modules.checkpoints import (
    check_output_dim,
    extract_state_dict,
    file_sha256,
    load_weights,
)
from softlabel.modules.metrics import build_metrics, monitor_for
from softlabel.modules.references import (
    CachedTeacher,
    FrozenModelProvider,
    IndexedLookup,
    LiveTeacher,
    PreviousModelProvider,
    ReferenceProvider,
    StoredPredictions,
)
from softlabel.modules.soft_label_module import SoftLabelModule

__all__ = [
    "CachedTeacher",
    "FrozenModelProvider",
    "IndexedLookup",
    "LiveTeacher",
    "PreviousModelProvider",
    "ReferenceProvider",
    "SoftLabelModule",
    "StoredPredictions",
    "build_metrics",
    "check_output_dim",
    "extract_state_dict",
    "file_sha256",
    "load_weights",
    "monitor_for",
]
