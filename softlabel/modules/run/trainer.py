"""The Lightning ``Trainer`` of a training run: its logger, its callbacks (a checkpoint
callback writes to ``<run>/checkpoints`` and monitors the run's metric by default), and the
Trainer itself."""

from __future__ import annotations

import os
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from softlabel.modules.callbacks import SaveHFConfig
from softlabel.modules.rundir import CHECKPOINT_DIR, ResumableCSVLogger

__all__ = ["OnTrainStart", "build_callbacks", "build_logger", "build_trainer"]


def build_callbacks(cfg: DictConfig, output_dir: str, monitor: str) -> list[Any]:
    """The callbacks of ``cfg.callbacks``; a ``ModelCheckpoint`` without ``dirpath`` or
    ``monitor`` gets ``<output_dir>/checkpoints`` and ``monitor``."""
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


def build_logger(cfg: DictConfig, output_dir: str, resume_step: int | None) -> Any:
    """The configured logger; Lightning's ``CSVLogger`` becomes :class:`ResumableCSVLogger`,
    which keeps the rows before ``resume_step`` and touches nothing before training logs."""
    from hydra.utils import get_class
    from lightning.pytorch.loggers import CSVLogger

    node = cfg.get("logger")
    if node is None or "_target_" not in node:
        return False
    extra: dict[str, Any] = {"save_dir": output_dir} if node.get("save_dir") is None else {}
    try:
        is_csv = get_class(str(node._target_)) is CSVLogger
    except Exception:  # noqa: BLE001 - instantiate below reports a bad target
        is_csv = False
    if is_csv:
        params = OmegaConf.to_container(node, resolve=True)
        assert isinstance(params, dict)
        params["_target_"] = f"{ResumableCSVLogger.__module__}.{ResumableCSVLogger.__name__}"
        return instantiate(params, resume_step=resume_step, **extra)
    return instantiate(node, **extra)


class OnTrainStart(L.Callback):
    """Calls ``action()`` once, when training starts (after Lightning restored a resumed
    run's state and before the first batch)."""

    def __init__(self, action: Any) -> None:
        super().__init__()
        self.action = action

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.action()


def build_trainer(
    cfg: DictConfig, output_dir: str, monitor: str, logger: Any, on_train_start: Any
) -> L.Trainer:
    """``cfg.trainer`` with the logger, the configured callbacks, :class:`SaveHFConfig`
    (a causal LM's architecture in every checkpoint) and ``on_train_start``."""
    callbacks = [
        *build_callbacks(cfg, output_dir, monitor),
        SaveHFConfig(),
        OnTrainStart(on_train_start),
    ]
    return instantiate(cfg.trainer, logger=logger, callbacks=callbacks, default_root_dir=output_dir)
