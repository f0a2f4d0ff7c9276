"""One training run: build everything from the config, fit, evaluate last and best, report."""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from softlabel._io import atomic_write, atomic_write_json
from softlabel.modules.build import (
    absolute_path,
    build_datamodule,
    build_loss,
    build_model,
    build_reference_provider,
    scheduler_parts,
)
from softlabel.modules.metrics import monitor_for
from softlabel.modules.soft_label_module import SoftLabelModule

__all__ = [
    "CHECKPOINT_DIR",
    "METRICS_FILE",
    "PREDICTIONS_FILE",
    "run_training",
    "save_test_predictions",
    "write_json_atomic",
]

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions_test.npz"
CHECKPOINT_DIR = "checkpoints"


def _silence_known_warnings() -> None:
    # Worker count is a deliberate config choice (data.num_workers), not an oversight:
    # the small in-memory datasets load fastest in the main process.
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    # Frozen teachers / previous models are kept in eval mode on purpose (see references.py).
    warnings.filterwarnings(
        "ignore", message=r".*module\(s\) in eval mode at the start of training.*"
    )
    # Raised inside Lightning's own pytree helper with newer torch; nothing a user can change.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def write_json_atomic(path: str, payload: dict[str, Any]) -> None:
    """Write ``payload`` as JSON to ``path`` atomically."""
    atomic_write_json(path, payload)


@torch.no_grad()
def save_test_predictions(module: SoftLabelModule, datamodule: Any, path: str) -> None:
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


def _choice(group: str, fallback: str) -> str:
    """The option chosen for a config group (``student=mlp`` -> ``"mlp"``), when Hydra runs."""
    try:
        from hydra.core.hydra_config import HydraConfig

        value = HydraConfig.get().runtime.choices.get(group)
    except ValueError:
        value = None
    return str(value) if value else fallback


def _build_callbacks(cfg: DictConfig, output_dir: str, monitor: str) -> list[Any]:
    callbacks = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None or "_target_" not in node:
            continue
        extra: dict[str, Any] = {}
        if str(node._target_).endswith("ModelCheckpoint"):
            if node.get("dirpath") is None:
                extra["dirpath"] = os.path.join(output_dir, CHECKPOINT_DIR)
            if node.get("monitor") is None:
                extra["monitor"] = monitor
        try:
            callbacks.append(instantiate(node, **extra))
        except Exception as error:
            raise ValueError(f"callbacks.{name} could not be built: {error}") from error
    return callbacks


def _build_logger(cfg: DictConfig, output_dir: str) -> Any:
    node = cfg.get("logger")
    if node is None or "_target_" not in node:
        return False
    extra = {"save_dir": output_dir} if node.get("save_dir") is None else {}
    return instantiate(node, **extra)


def _scalars(results: list[dict[str, Any]]) -> dict[str, float]:
    merged: dict[str, float] = {}
    for result in results:
        merged.update({k: float(v) for k, v in result.items()})
    return dict(sorted(merged.items()))


def _evaluate(
    trainer: L.Trainer, module: SoftLabelModule, datamodule: Any, ckpt_path: str | None
) -> dict[str, float]:
    """val + test metrics of the module's weights, or of ``ckpt_path`` when given."""
    val = trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    test = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    return _scalars(val + test)


def _target_record(cfg: DictConfig, source: Any, method: str) -> dict[str, Any]:
    params = OmegaConf.to_container(cfg.target, resolve=True)
    assert isinstance(params, dict)
    params.pop("_target_", None)
    name = getattr(source, "name", None) or method
    return {"name": str(name), **params}


def run_training(cfg: DictConfig, output_dir: str) -> dict[str, Any]:
    """Fit the configured student, evaluate the last and the best-on-val weights, and write
    ``metrics.json`` in ``output_dir``. Returns the metrics record."""
    _silence_known_warnings()
    start = time.perf_counter()
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    os.makedirs(output_dir, exist_ok=True)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)

    datamodule = build_datamodule(cfg)
    loss = build_loss(cfg, datamodule)
    source = loss.source
    provider, reference_record = build_reference_provider(cfg, source.reference, datamodule)
    student = build_model(cfg.student, datamodule)
    optimizer = instantiate(cfg.optimizer, _partial_=True)
    scheduler, interval = scheduler_parts(cfg)
    task = datamodule.task
    module = SoftLabelModule(
        student,
        loss,
        optimizer=optimizer,
        scheduler=scheduler,
        scheduler_interval=interval,
        reference_provider=provider,
        task=task,
        num_classes=1 if task == "binary" else int(datamodule.num_classes),
    )
    monitor = cfg.get("monitor") or monitor_for(task)
    logger = _build_logger(cfg, output_dir)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        logger=logger,
        callbacks=_build_callbacks(cfg, output_dir, monitor),
        default_root_dir=output_dir,
    )
    if logger:
        trainer.logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    ckpt_path = absolute_path(cfg.ckpt_path) if cfg.get("ckpt_path") else None
    if ckpt_path is not None and not os.path.isfile(ckpt_path):
        raise FileNotFoundError(
            f"ckpt_path not found: {ckpt_path!r} (from ckpt_path={cfg.ckpt_path!r})"
        )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    last = _evaluate(trainer, module, datamodule, None)
    best: dict[str, Any] | None = None
    best_path = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
    if best_path and os.path.isfile(best_path):
        epoch = torch.load(best_path, map_location="cpu", weights_only=False).get("epoch")
        best = {"epoch": epoch, **_evaluate(trainer, module, datamodule, best_path)}

    method = cfg.get("method") or _choice("target", str(getattr(source, "name", "")))
    record: dict[str, Any] = {
        "method": str(method),
        "seed": int(cfg.seed),
        "task": task,
        "wall_time_s": round(time.perf_counter() - start, 3),
        "data": str(getattr(datamodule, "name", _choice("data", "data"))),
        "student": _choice("student", type(student).__name__),
        "target": _target_record(cfg, source, str(method)),
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
    if trainer.is_global_zero:
        if cfg.get("save_predictions"):
            # The module holds the val-selected weights here (the last evaluation loaded
            # best.ckpt, or there is none and they are the final weights).
            save_test_predictions(module, datamodule, os.path.join(output_dir, PREDICTIONS_FILE))
            record["predictions"] = PREDICTIONS_FILE
        write_json_atomic(os.path.join(output_dir, METRICS_FILE), _jsonable(record))
    return record


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
