"""Callbacks of the training app."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import lightning as L

from softlabel._io import atomic_write_json
from softlabel.modules.checkpoints import HF_CONFIG_KEY

__all__ = ["ParameterChecksum", "SaveHFConfig"]


class SaveHFConfig(L.Callback):
    """Saves the student's Hugging Face config (what ``config.json`` holds) in every
    checkpoint, under ``HF_CONFIG_KEY``, so that ``teacher.checkpoint`` or
    ``previous.checkpoint`` rebuild its architecture; a student without one (no
    ``config.to_json_string``) adds nothing. Plain JSON values only: the checkpoint stays
    readable by torch's weights-only loader."""

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        config = getattr(getattr(pl_module, "student", None), "config", None)
        to_json = getattr(config, "to_json_string", None)
        if callable(to_json):
            checkpoint[HF_CONFIG_KEY] = json.loads(to_json(use_diff=False))


class ParameterChecksum(L.Callback):
    """At the end of fit, every rank writes ``<dirpath>/rank<r>.json`` with a SHA-256 of its
    student parameters (bytes in ``named_parameters`` order) and its global step.

    Under data-parallel training all ranks must hold identical weights: compare the files.
    """

    def __init__(self, dirpath: str) -> None:
        super().__init__()
        self.dirpath = os.fspath(dirpath)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        digest = hashlib.sha256()
        student = getattr(pl_module, "student", pl_module)
        for name, param in student.named_parameters():
            digest.update(name.encode())
            digest.update(param.detach().cpu().contiguous().numpy().tobytes())
        record: dict[str, Any] = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "sha256": digest.hexdigest(),
        }
        os.makedirs(self.dirpath, exist_ok=True)
        path = os.path.join(self.dirpath, f"rank{trainer.global_rank}.json")
        atomic_write_json(path, record)
