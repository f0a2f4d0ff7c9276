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
    ``accumulate_grad_batches`` before handing it to the callbacks), the norm of the
    student's whole gradient after each micro-batch (after the optimizer step: the
    gradient it applied), and whether the student and the teacher were sharded."""

    def __init__(self, dirpath: str) -> None:
        super().__init__()
        self.dirpath = dirpath
        self.rows: list[tuple[float, int]] = []
        self.grad_norms: list[float] = []
        self.sharded: dict[str, Any] = {}

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss_sum = float(outputs["loss"]) * trainer.accumulate_grad_batches
        self.rows.append((loss_sum, int((batch[1][:, 1:] != -100).sum())))
        # the student's gradient of the last optimizer step (zeroed only by the next one),
        # gathered from the shards: every rank calls full_tensor
        squares = 0.0
        for param in pl_module.student.parameters():
            if param.grad is not None:
                grad = param.grad
                grad = grad.full_tensor() if hasattr(grad, "full_tensor") else grad
                squares += float(grad.double().pow(2).sum())
        self.grad_norms.append(squares**0.5)
        if not self.sharded:  # what FSDP2 wrapped, and the head weights between forwards
            from softlabel.modules.sharding import is_sharded

            teacher = pl_module.reference_provider.model
            self.sharded = {
                "student": is_sharded(pl_module.student),
                "teacher": is_sharded(teacher),
                "student_head": type(pl_module.student.head.weight).__name__,
                "teacher_head": type(teacher.head.weight).__name__,
            }

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        os.makedirs(self.dirpath, exist_ok=True)
        path = os.path.join(self.dirpath, f"rank{trainer.global_rank}.json")
        with open(path, "w", encoding="utf-8") as handle:
            record = {"rows": self.rows, "grad_norms": self.grad_norms, **self.sharded}
            record["world_size"] = trainer.world_size
            json.dump(record, handle)


def main(spec_path: str) -> None:
    from train_configs import compose_train

    from softlabel.train import train

    with open(spec_path, encoding="utf-8") as handle:
        runs = json.load(handle)
    for run in runs:
        train(compose_train(*run["overrides"]), run["dir"])


if __name__ == "__main__":
    main(sys.argv[1])
