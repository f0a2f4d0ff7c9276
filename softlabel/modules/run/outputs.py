"""What a training run leaves in its directory besides the checkpoints and the logs: the
metrics record (``metrics.json``), the test predictions (``predictions_test*.npz``) and a
causal LM in Hugging Face format (``hf_model/``). Every file is written atomically and
follows the umask."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from softlabel._io import atomic_write, atomic_write_json, umask_mode
from softlabel.modules.rundir import CHECKPOINT_DIR

__all__ = [
    "CHECKPOINT_DIR",
    "HF_MODEL_DIR",
    "METRICS_FILE",
    "PREDICTIONS_FILE",
    "PREDICTIONS_LAST_FILE",
    "metrics_record",
    "save_hf_model",
    "save_test_predictions",
    "write_json_atomic",
]

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions_test.npz"  # the val-selected weights
PREDICTIONS_LAST_FILE = "predictions_test_last.npz"  # the final weights
HF_MODEL_DIR = "hf_model"


def write_json_atomic(path: str, payload: dict[str, Any]) -> None:
    """Write ``payload`` as JSON to ``path`` atomically."""
    atomic_write_json(path, _jsonable(payload))


@torch.no_grad()
def save_test_predictions(module: Any, datamodule: Any, path: str) -> None:
    """Write the module's test-split probabilities to ``path`` (``.npz``, atomically):
    ``probs`` (N, K) softmax, or (N,) P(y=1) for binary; ``target`` (N,); ``index`` (N,)."""
    was_training = module.training
    module.eval()
    probs, target, index = [], [], []
    for x, y, idx in datamodule.test_dataloader():
        out = module.predict_step((x.to(module.device), y, idx), 0)
        probs.append(out["probs"].float().cpu())
        target.append(y)
        index.append(idx)
    module.train(was_training)
    arrays = {
        "probs": torch.cat(probs).numpy(),
        "target": torch.cat(target).long().numpy(),
        "index": torch.cat(index).long().numpy(),
    }
    atomic_write(path, lambda tmp: np.savez(tmp, **arrays))


def save_hf_model(
    model: nn.Module, tokenizer: Any, directory: str, state_dict: dict[str, Any] | None = None
) -> str | None:
    """Write ``model`` in Hugging Face format to ``directory`` atomically (a temporary
    sibling, given the umask's permissions, renamed into place; a previous directory there
    is replaced); returns the directory, or None when the model has no
    ``save_pretrained``. ``state_dict``: the weights to write instead of the model's own (a
    sharded model's, gathered). A symbolic link or a file at ``directory`` is refused,
    never followed."""
    save = getattr(model, "save_pretrained", None)
    if not callable(save):
        return None
    if os.path.islink(directory) or (os.path.lexists(directory) and not os.path.isdir(directory)):
        raise ValueError(
            f"{directory!r} is a symbolic link or not a directory: the trained model is not "
            "written over it (nothing it points to is touched)"
        )
    parent = os.path.dirname(os.path.abspath(directory))
    name = os.path.basename(directory)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    old = None
    try:
        save(tmp, tokenizer=tokenizer, **({} if state_dict is None else {"state_dict": state_dict}))
        # mkdtemp makes 0700, and the weights file comes out 0600: give the umask's modes
        for root, _dirs, files in os.walk(tmp):
            os.chmod(root, umask_mode(0o777))
            for entry in files:
                os.chmod(os.path.join(root, entry), umask_mode(0o666))
        if os.path.isdir(directory):
            old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
            os.replace(directory, os.path.join(old, name))
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not os.path.lexists(directory):
            os.replace(os.path.join(old, name), directory)  # put the previous one back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return directory


def choice(group: str, fallback: str) -> str:
    """The option chosen for a config group (``student=mlp`` -> ``"mlp"``), when Hydra runs."""
    try:
        from hydra.core.hydra_config import HydraConfig

        value = HydraConfig.get().runtime.choices.get(group)
    except ValueError:
        value = None
    return str(value) if value else fallback


def _target_record(cfg: DictConfig, source: Any, method: str) -> dict[str, Any]:
    params = OmegaConf.to_container(cfg.target, resolve=True)
    assert isinstance(params, dict)
    params.pop("_target_", None)
    name = getattr(source, "name", None) or method
    return {"name": str(name), **params}


def metrics_record(
    cfg: DictConfig,
    *,
    start: tuple[float, float],
    trainer: Any,
    datamodule: Any,
    student: nn.Module,
    source: Any,
    monitor: str,
    last: dict[str, float],
    best: dict[str, Any] | None,
    best_path: str,
    output_dir: str,
    reference_record: dict[str, Any],
) -> dict[str, Any]:
    """The content of ``metrics.json``: what ran (method, seed, data, student, target and
    its reference), for how long, and the last and the best-on-val weights' metrics.
    ``start`` is ``(time.perf_counter(), time.process_time())`` at the run's start."""
    method = str(cfg.get("method") or choice("target", str(getattr(source, "name", ""))))
    return {
        "method": method,
        "seed": int(cfg.seed),
        "task": datamodule.task,
        "wall_time_s": round(time.perf_counter() - start[0], 3),
        # CPU seconds of this process (all its threads): unlike the wall time, barely
        # changed by other jobs sharing the cores
        "cpu_time_s": round(time.process_time() - start[1], 3),
        "data": str(getattr(datamodule, "name", choice("data", "data"))),
        "student": choice("student", type(student).__name__),
        "target": _target_record(cfg, source, method),
        "last": last,
        "best": best,
        "monitor": monitor,
        "best_checkpoint": os.path.relpath(best_path, output_dir) if best else None,
        **reference_record,
        "label_noise": getattr(datamodule, "noise_report", None),
        "num_params": sum(p.numel() for p in student.parameters()),
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "data_fingerprint": getattr(datamodule, "fingerprint", None),
    }


def _jsonable(value: Any) -> Any:
    """``value`` with numpy/torch scalars and tuples turned into plain JSON types."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "__dict__"):
        return _jsonable(vars(value))
    return str(value)
