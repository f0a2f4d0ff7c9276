"""Two CPU processes (DDP, gloo) with a live teacher: both ranks end with the same weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from softlabel.models import MLP


@pytest.mark.slow
def test_ddp_two_cpu_ranks_agree(tmp_path):
    teacher = tmp_path / "teacher.pt"
    torch.save(MLP(input_shape=(64,), num_classes=10, hidden=(16,)).state_dict(), teacher)
    args = [
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_model_summary=false",
        "data.subset=200",
        "student.hidden=[16]",
        "target=kd",
        "teacher=mlp",
        "teacher.model.hidden=[16]",
        f"teacher.checkpoint={teacher}",
        "callbacks.progress_bar.refresh_rate=0",
        "+callbacks.checksum._target_=softlabel.modules.callbacks.ParameterChecksum",
        f"+callbacks.checksum.dirpath={tmp_path / 'ranks'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    done = subprocess.run(
        [sys.executable, "-m", "softlabel.train", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 2
    assert ranks[0]["sha256"] == ranks[1]["sha256"]
    # the saved student is the weights both ranks hold
    from softlabel.modules.callbacks import ParameterChecksum

    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)[
        "state_dict"
    ]
    student = MLP(input_shape=(64,), num_classes=10, hidden=(16,))
    student.load_state_dict({k.removeprefix("student."): v for k, v in state.items()})

    class Stub:
        global_rank, world_size, global_step = 9, 2, 2

    holder = torch.nn.Module()
    holder.student = student
    ParameterChecksum(str(tmp_path / "check")).on_train_end(Stub(), holder)
    assert (
        json.loads((tmp_path / "check" / "rank9.json").read_text())["sha256"] == ranks[0]["sha256"]
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["method"] == "kd" and metrics["teacher_checkpoint"] == str(teacher)
