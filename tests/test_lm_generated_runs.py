"""``softlabel-train`` end to end with a GGUF model as tokenizer, student and teacher, on
on-policy distillation and sequence-level KD; refused settings fail before training and
leave nothing a resume would take for a run."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gguf")

from gguf_writer import write_gguf  # noqa: E402
from train_configs import compose_train  # noqa: E402

from softlabel.modules.checkpoints import file_sha256  # noqa: E402
from softlabel.train import train  # noqa: E402

WORDS = "the quick brown fox jumps over a lazy dog at the bat and tab".split()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """``(corpus directory, tiny llama GGUF)``."""
    root = tmp_path_factory.mktemp("gguf_corpus")
    gen = torch.Generator().manual_seed(0)
    for i in range(30):
        picks = torch.randint(0, len(WORDS), (20,), generator=gen).tolist()
        (root / f"doc{i:02d}.txt").write_text(" ".join(WORDS[j] for j in picks) + ".\n")
    return root, write_gguf(root / "tiny.gguf")


def args(files, *extra):
    corpus, gguf = files
    return [
        "data=text",
        f"data.files={corpus}/*.txt",
        f"data.tokenizer={gguf}",
        "data.block_size=16",
        "data.batch_size=4",
        "data.val_fraction=0.1",
        "data.test_fraction=0.1",
        "student=hf_causal_lm",
        f"student.pretrained={gguf}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_model_summary=false",
        "callbacks.progress_bar.refresh_rate=0",
        *extra,
    ]


def run(files, run_dir, *extra):
    train(compose_train(*args(files, *extra)), str(run_dir))
    return json.loads((run_dir / "metrics.json").read_text())


def test_gguf_on_policy_kd_end_to_end(files, tmp_path):
    _, gguf = files
    metrics = run(
        files,
        tmp_path,
        "target=kd_jsd",
        "target.alpha=1.0",
        "target.temperature=1.0",
        "teacher=hf_causal_lm",
        f"teacher.pretrained={gguf}",
        "lm.on_policy.fraction=1.0",
        "lm.on_policy.prompt_tokens=8",
        "lm.on_policy.max_new_tokens=6",
        "lm.on_policy.top_k=20",
    )
    assert metrics["global_step"] == 2 and metrics["generation_time_s"] > 0
    assert metrics["teacher_pretrained"] == str(gguf)
    assert metrics["teacher_sha256"] == file_sha256(str(gguf))
    config = json.loads((tmp_path / "hf_model" / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert (tmp_path / "hf_model" / "tokenizer.json").is_file()


def test_seq_kd_with_hard_labels_end_to_end(files, tmp_path):
    _, gguf = files
    metrics = run(
        files,
        tmp_path,
        "target=hard",
        "teacher=hf_causal_lm",
        f"teacher.pretrained={gguf}",
        "lm.seq_kd=true",
        "lm.on_policy.temperature=0",
    )
    assert metrics["global_step"] == 2 and metrics["generation_time_s"] > 0
    assert metrics["teacher_sha256"] == file_sha256(str(gguf))


@pytest.mark.parametrize(
    ("extra", "error", "message"),
    [
        (
            ["target=kd", "teacher=cached", "teacher.cache=/nowhere", "lm.on_policy.fraction=0.5"],
            ValueError,
            r"lm.on_policy.fraction=0.5 with teacher=cached",
        ),
        (["target=kd", "lm.on_policy.fraction=1.5"], ValueError, r"fraction=1.5; allowed"),
        (
            ["target=kd", "lm.on_policy.fraction=0.5", "lm.on_policy.max_new_tokens=12"],
            ValueError,
            r"max_new_tokens=12 with lm.on_policy.prompt_tokens=8: allowed an integer in 1..8",
        ),
        (["target=hard", "lm.on_policy.fraction=0.5"], ValueError, r"needs no teacher"),
        (["target=hard", "lm.seq_kd=true"], ValueError, r"lm.seq_kd=true needs a teacher"),
        (
            ["target=hard", "lm.seq_kd=true", "teacher=hf_causal_lm"],
            ValueError,
            r"exactly one of teacher.checkpoint",
        ),
    ],
)
def test_refused_before_training_leaving_nothing(files, tmp_path, extra, error, message):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(error, match=message):
        run(files, run_dir, *extra)
    assert sorted(p.name for p in run_dir.iterdir()) == []


def test_custom_code_teacher_refused_before_training(files, tmp_path):
    from gguf_writer import tiny_llama

    teacher = tmp_path / "custom"
    tiny_llama().save_pretrained(teacher)
    config = json.loads((teacher / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.Custom"}
    (teacher / "config.json").write_text(json.dumps(config))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(ValueError, match=r"teacher.pretrained=.*declares auto_map"):
        run(files, run_dir, "target=kd", "teacher=hf_causal_lm", f"teacher.pretrained={teacher}")
    assert sorted(p.name for p in run_dir.iterdir()) == []


def test_teacher_of_another_vocabulary_refused_before_training(files, tmp_path):
    from softlabel.models import hf_causal_lm

    small = hf_causal_lm(
        config={"model_type": "gpt2", "n_layer": 1, "n_embd": 8, "n_head": 2, "n_positions": 16},
        num_classes=200,
    )
    small.save_pretrained(str(tmp_path / "small"))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(
        ValueError, match=r"teacher.pretrained=.*200 output rows but the data.s tokenizer has 259"
    ):
        run(
            files,
            run_dir,
            "target=kd",
            "teacher=hf_causal_lm",
            f"teacher.pretrained={tmp_path / 'small'}",
        )
    assert sorted(p.name for p in run_dir.iterdir()) == []
