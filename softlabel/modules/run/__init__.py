"""One ``softlabel-train`` run, by job: ``checks`` (the settings, before anything changes),
``resume`` (``ckpt_path``), ``trainer`` (logger, callbacks, the Trainer), ``training`` (the
run itself: :func:`run_training`) and ``outputs`` (``metrics.json``, predictions,
``hf_model/``)."""

from softlabel.modules.run.outputs import (
    CHECKPOINT_DIR,
    HF_MODEL_DIR,
    METRICS_FILE,
    PREDICTIONS_FILE,
    PREDICTIONS_LAST_FILE,
    save_hf_model,
    save_test_predictions,
    write_json_atomic,
)
from softlabel.modules.run.training import run_training

__all__ = [
    "CHECKPOINT_DIR",
    "HF_MODEL_DIR",
    "METRICS_FILE",
    "PREDICTIONS_FILE",
    "PREDICTIONS_LAST_FILE",
    "run_training",
    "save_hf_model",
    "save_test_predictions",
    "write_json_atomic",
]
