"""One of the two CPU processes of ``tests/test_fsdp2.py``: runs ``softlabel-train``
configurations one after the other in one process group, as torchrun would start them
(Lightning reads ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` and starts
no processes of its own). Also :class:`LossProbe`, the test callback both sides use."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import lightning as L


class LossProbe(L.Callback):
    """Writes ``<dirpath>/rank<r>.json``: each micro-batch's token-summed loss and scored
    token count on this rank (``training_step`` returns the sum; Lightning divides it by
    ``accumulate_grad_batches`` before handing it to the callbacks)."""

    def __init__(self, dirpath: str) -> None:
        super().__init__()
        self.dirpath = dirpath
        self.rows: list[tuple[float, int]] = []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss_sum = float(outputs["loss"]) * trainer.accumulate_grad_batches
        self.rows.append((loss_sum, int((batch[1][:, 1:] != -100).sum())))

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        os.makedirs(self.dirpath, exist_ok=True)
        path = os.path.join(self.dirpath, f"rank{trainer.global_rank}.json")
        with open(path, "w", encoding="utf-8") as handle:
            json.dump({"rows": self.rows, "world_size": trainer.world_size}, handle)


def main(spec_path: str) -> None:
    from train_configs import compose_train

    from softlabel.train import train

    with open(spec_path, encoding="utf-8") as handle:
        runs = json.load(handle)
    for run in runs:
        train(compose_train(*run["overrides"]), run["dir"])


if __name__ == "__main__":
    main(sys.argv[1])
