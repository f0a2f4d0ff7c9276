"""A Hugging Face student across processes: DDP on 2 CPU processes (gloo) with gradient
accumulation, and a sweep through Hydra's submitit_local launcher."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("transformers")

TINY = "{model_type:gpt2,n_layer:1,n_embd:16,n_head:2,n_positions:32}"


def _corpus(root):
    for i in range(24):
        (root / f"doc{i:02d}.txt").write_text(f"document {i}: " + "lorem ipsum dolor " * (5 + i))
    return root


def _train(tmp_path, *args, timeout=400):
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    common = [
        "data=text",
        f"data.files={_corpus(tmp_path)}/*.txt",
        "data.block_size=32",
        "data.batch_size=2",
        "student=hf_causal_lm",
        f"student.config={TINY}",
        "target=hard",
        "trainer.max_epochs=1",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_model_summary=false",
        "callbacks.progress_bar.refresh_rate=0",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "softlabel.train", *args, *common],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_ddp_two_cpu_ranks_agree_on_the_hf_student(tmp_path):
    _train(
        tmp_path,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.limit_train_batches=4",
        "trainer.accumulate_grad_batches=2",
        "+callbacks.checksum._target_=softlabel.modules.callbacks.ParameterChecksum",
        f"+callbacks.checksum.dirpath={tmp_path / 'ranks'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    ranks = [json.loads((tmp_path / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 2
    assert ranks[0]["sha256"] == ranks[1]["sha256"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["task"] == "causal_lm" and (tmp_path / "run" / "hf_model").is_dir()


@pytest.mark.slow
def test_submitit_local_sweep(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    _train(
        tmp_path,
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=5",
        "hydra.launcher.cpus_per_task=1",
        "trainer.limit_train_batches=2",
        "seed=0,1",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    for job in (0, 1):
        metrics = json.loads((tmp_path / "sweep" / str(job) / "metrics.json").read_text())
        assert metrics["seed"] == job and metrics["global_step"] == 2
