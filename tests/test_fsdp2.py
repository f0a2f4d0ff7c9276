"""``trainer=fsdp2`` (FSDP2 through Lightning's ModelParallelStrategy) on two CPU processes
(gloo) against one process on the whole batch: KD from a live teacher through the fused
linear head, with a tied student head (GPT-2) and an untied teacher head (llama).

The train split is 4 blocks (31, 31, 31 and 19 scored tokens), so one optimizer step sees
all of it whatever the order: 2 blocks per process, or 1 block per process and micro-batch
with ``accumulate_grad_batches=2``, against 4 blocks in one process. The two processes are
started once for the file and run every sharded configuration in one process group."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from train_configs import compose_train  # noqa: E402

from softlabel.train import train  # noqa: E402

TESTS = Path(__file__).resolve().parent
NO_DROPOUT = dict.fromkeys(("resid_pdrop", "embd_pdrop", "attn_pdrop"), 0.0)
STUDENT = {"model_type": "gpt2", "n_layer": 2, "n_embd": 16, "n_head": 2, "n_positions": 32}
TEACHER = {
    "model_type": "llama",
    "num_hidden_layers": 2,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32,
}
SHARDED = ["trainer=fsdp2", "trainer.accelerator=cpu", "trainer.precision=32-true"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Six 28-byte documents (train 4, val 1, test 1), the student's initial weights and the
    teacher, as Hugging Face directories."""
    from softlabel.models.hf import hf_causal_lm

    root = tmp_path_factory.mktemp("fsdp2")
    words = "the quick brown fox jumps over lazy dog cat sun".split()
    gen = torch.Generator().manual_seed(0)
    (root / "corpus").mkdir()
    for i in range(6):
        text = " ".join(words[j] for j in torch.randint(0, len(words), (12,), generator=gen))
        (root / "corpus" / f"doc{i}.txt").write_text(text[:27] + ".")
    torch.manual_seed(0)
    student = hf_causal_lm(config={**STUDENT, **NO_DROPOUT}, num_classes=258)
    assert student.model.config.tie_word_embeddings
    student.save_pretrained(str(root / "student"))
    torch.manual_seed(1)
    teacher = hf_causal_lm(config=TEACHER, num_classes=258)
    assert not teacher.model.config.tie_word_embeddings
    teacher.save_pretrained(str(root / "teacher"))
    return root


def overrides(root: Path, name: str, *extra: str) -> list[str]:
    return [
        "data=text",
        f"data.files={root / 'corpus'}/*.txt",
        "data.block_size=32",
        "data.val_fraction=0.2",
        "data.test_fraction=0.2",
        "student=hf_causal_lm",
        f"student.pretrained={root / 'student'}",
        "target=kd",
        "teacher=hf_causal_lm",
        f"teacher.pretrained={root / 'teacher'}",
        # SGD: its update is proportional to the gradient, so a wrong token normalisation
        # shows in the weights (AdamW's first step is nearly sign(gradient))
        "optimizer=sgd",
        "scheduler=none",
        "threads=1",
        "trainer.max_epochs=1",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_model_summary=false",
        "callbacks.progress_bar.refresh_rate=0",
        "+callbacks.probe._target_=fsdp2_worker.LossProbe",
        f"+callbacks.probe.dirpath={root / 'probe' / name}",
        *extra,
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def sharded(setup):
    """The sharded runs, in two processes: ``step`` (one step, 2 blocks per process),
    ``bf16`` (the same in ``bf16-mixed``), ``accumulate`` (1 block per micro-batch, ``accumulate_grad_batches=2``) and ``resume``
    (a second epoch from ``step``'s last checkpoint)."""
    root = setup
    runs = [
        ("step", ["data.batch_size=2"]),
        # the config's own precision: bfloat16 gathers under autocast (CPU autocast here)
        ("bf16", ["data.batch_size=2", "trainer.precision=bf16-mixed"]),
        ("accumulate", ["data.batch_size=1", "trainer.accumulate_grad_batches=2"]),
        (
            "resume",
            [
                "data.batch_size=2",
                "trainer.max_epochs=2",
                f"ckpt_path={root / 'step' / 'checkpoints' / 'last.ckpt'}",
            ],
        ),
    ]
    spec = [
        {"overrides": overrides(root, name, *SHARDED, *extra), "dir": str(root / name)}
        for name, extra in runs
    ]
    (root / "spec.json").write_text(json.dumps(spec))
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    env = {
        **os.environ,
        "PYTHONPATH": path,
        "PYTHONWARNINGS": "ignore",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "WORLD_SIZE": "2",
        "NODE_RANK": "0",
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, str(TESTS / "fsdp2_worker.py"), str(root / "spec.json")]
    workers = [
        subprocess.Popen(
            command,
            cwd=root,
            env={**env, "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    logs = [worker.communicate(timeout=500)[0] for worker in workers]
    for rank, worker in enumerate(workers):
        assert worker.returncode == 0, f"rank {rank}:\n{logs[rank][-4000:]}"
    return root


@pytest.fixture(scope="module")
def single(setup):
    """The same configurations in one process on the whole batch (4 blocks): one epoch and
    two."""
    root = setup
    for name, epochs in (("single", 1), ("single2", 2)):
        extra = ["data.batch_size=4", f"trainer.max_epochs={epochs}"]
        train(compose_train(*overrides(root, name, *extra)), str(root / name))
    return root


def _step_loss(root: Path, name: str) -> float:
    """The loss of the run's one optimizer step: the token-summed loss over every process
    and micro-batch over the tokens scored."""
    files = sorted((root / "probe" / name).glob("rank*.json"))
    rows = [row for path in files for row in json.loads(path.read_text())["rows"]]
    return sum(loss for loss, _ in rows) / sum(tokens for _, tokens in rows)


def _probe(root: Path, name: str, rank: int = 0) -> dict:
    return json.loads((root / "probe" / name / f"rank{rank}.json").read_text())


def _student(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("student.")}


def _hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def _assert_same_weights(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.slow
def test_one_kd_step_matches_one_process(sharded, single):
    probes = [_probe(sharded, "step", rank) for rank in (0, 1)]
    assert [p["world_size"] for p in probes] == [2, 2]
    for probe in probes:  # FSDP2 wrapped both; between forwards the heads are shards
        assert probe["student"] is True and probe["teacher"] is True
        assert probe["student_head"] == probe["teacher_head"] == "DTensor"
    assert _probe(single, "single")["student"] is False
    assert _step_loss(sharded, "step") == pytest.approx(_step_loss(single, "single"), rel=1e-6)
    # the gradient the optimizer applied: the mean over the step's tokens, as in one process
    expected = _probe(single, "single")["grad_norms"][-1]
    assert probes[0]["grad_norms"][-1] == pytest.approx(expected, rel=1e-5)
    got = _student(sharded / "step" / "checkpoints" / "last.ckpt")
    _assert_same_weights(got, _student(single / "single" / "checkpoints" / "last.ckpt"))
    # the step moved the (tied) head
    before = _hf_weights(sharded / "student")["transformer.wte.weight"]
    assert not torch.allclose(before, got["student.model.lm_head.weight"])


@pytest.mark.slow
def test_bf16_mixed_step_stays_close_to_fp32(sharded, single):
    """trainer=fsdp2's default precision: bfloat16 parameters gathered, fp32 shards and
    gradient reduction; the step's loss and update within bfloat16's precision."""
    assert _step_loss(sharded, "bf16") == pytest.approx(_step_loss(single, "single"), rel=1e-3)
    before = _hf_weights(sharded / "student")
    got = _student(sharded / "bf16" / "checkpoints" / "last.ckpt")
    expected = _student(single / "single" / "checkpoints" / "last.ckpt")
    for key, value in expected.items():
        assert got[key].dtype == torch.float32  # the sharded parameters stay fp32
        name = key.removeprefix("student.model.")
        start = before["transformer.wte.weight" if name == "lm_head.weight" else name]
        step, fp32_step = got[key] - start, value - start
        assert (
            torch.linalg.vector_norm(step - fp32_step)
            <= 0.05 * torch.linalg.vector_norm(fp32_step) + 1e-6
        ), key


@pytest.mark.slow
def test_accumulation_matches_one_process(sharded, single):
    rows = json.loads((sharded / "probe" / "accumulate" / "rank0.json").read_text())["rows"]
    assert len(rows) == 2  # two micro-batches of one block on this process
    expected = _probe(single, "single")["grad_norms"][-1]
    assert _probe(sharded, "accumulate")["grad_norms"][-1] == pytest.approx(expected, rel=1e-5)
    assert _step_loss(sharded, "accumulate") == pytest.approx(
        _step_loss(single, "single"), rel=1e-6
    )
    got = _student(sharded / "accumulate" / "checkpoints" / "last.ckpt")
    _assert_same_weights(got, _student(single / "single" / "checkpoints" / "last.ckpt"))


@pytest.mark.slow
def test_resume_after_a_step_matches_a_straight_run(sharded, single):
    resumed = torch.load(
        sharded / "resume" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert resumed["global_step"] == 2
    got = _student(sharded / "resume" / "checkpoints" / "last.ckpt")
    _assert_same_weights(got, _student(single / "single2" / "checkpoints" / "last.ckpt"))


@pytest.mark.slow
def test_hf_model_export_equals_the_one_process_export(sharded, single):
    got, expected = sharded / "step" / "hf_model", single / "single" / "hf_model"
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in expected.iterdir())
    config = json.loads((got / "config.json").read_text())
    assert config == json.loads((expected / "config.json").read_text())
    _assert_same_weights(_hf_weights(got), _hf_weights(expected))
    metrics = json.loads((sharded / "step" / "metrics.json").read_text())
    assert metrics["hf_model"] == {"dir": "hf_model", "weights": "best"}


# ------------------------------------------------------------ refusals, in this process
def _lm_module(student, teacher=None):
    import functools

    from softlabel import SoftTargetLoss
    from softlabel.modules.lm_module import CausalLMModule
    from softlabel.modules.references import LiveTeacher
    from softlabel.targets import Hard, Teacher

    return CausalLMModule(
        student,
        SoftTargetLoss(Hard() if teacher is None else Teacher()),
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
        reference_provider=None if teacher is None else LiveTeacher(teacher),
        vocab_size=11,
    )


def test_a_model_without_known_blocks_is_refused_by_name():
    """Refused by the module's check (run before the processes start), naming the
    setting, the role and the model type: the student's, then a live teacher's."""
    from softlabel.models.hf import hf_causal_lm
    from softlabel.modules.sharding import blocks_to_shard

    def tiny():
        return hf_causal_lm(config={**STUDENT, "n_positions": 8}, num_classes=11)

    model, teacher = tiny(), tiny()
    assert len(blocks_to_shard(model, "student")) == 2  # GPT2Block x 2
    _lm_module(model, teacher).check_shardable()
    teacher.model._no_split_modules = None  # a model type transformers names no blocks for
    with pytest.raises(ValueError, match=r"trainer=fsdp2 .* cannot shard the teacher .*'gpt2'"):
        _lm_module(model, teacher).check_shardable()
    model.model._no_split_modules = None
    with pytest.raises(ValueError, match=r"trainer=fsdp2 .* cannot shard the student .*'gpt2'"):
        _lm_module(model).check_shardable()


def test_tensor_parallelism_is_refused_by_name():
    class Mesh:  # the two dimensions of the strategy's device mesh
        def __getitem__(self, name):
            return type("Dim", (), {"size": lambda self: 2 if name == "tensor_parallel" else 1})()

    from softlabel.models.hf import hf_causal_lm

    module = _lm_module(hf_causal_lm(config={**STUDENT, "n_positions": 8}, num_classes=11))
    module._device_mesh = Mesh()
    with pytest.raises(ValueError, match=r"trainer.strategy.tensor_parallel_size=2"):
        module.configure_model()


def test_what_cannot_be_sharded_is_refused_before_training(setup, tmp_path):
    """Generated batches (transformers' generate runs outside the sharded forward),
    checkpoints as directories of shards and a classifier: refused by name before any
    process starts, the run directory untouched."""
    on_policy = overrides(setup, "refused", *SHARDED, "lm.on_policy.fraction=0.5")
    with pytest.raises(ValueError, match=r"lm.on_policy.fraction with trainer=fsdp2"):
        train(compose_train(*on_policy), str(tmp_path / "lm"))
    shards = [*on_policy[:-1], "trainer.strategy.save_distributed_checkpoint=true"]
    with pytest.raises(ValueError, match=r"trainer.strategy.save_distributed_checkpoint=true"):
        train(compose_train(*shards), str(tmp_path / "shards"))
    classifier = [*SHARDED, "data.subset=200", "student.hidden=[16]"]
    with pytest.raises(ValueError, match=r"trainer=fsdp2 .* shards causal language models"):
        train(compose_train(*classifier), str(tmp_path / "digits"))
    assert not any(tmp_path.rglob("*.ckpt")) and not any(tmp_path.rglob("metrics.json"))
