"""Callbacks of the training app."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import lightning as L

from softlabel._io import atomic_write_json

__all__ = ["ParameterChecksum"]


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
