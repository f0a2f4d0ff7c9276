"""``softlabel-train data=text student=hf_causal_lm``: end to end on tiny text files, with
every kind of reference (live teacher from a checkpoint or a Hugging Face directory, a
padded-superset teacher, ReLoop against a previous version), and the refusals."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from train_configs import compose_train  # noqa: E402

from softlabel.train import train  # noqa: E402

TINY = "{model_type:gpt2,n_layer:1,n_embd:16,n_head:2,n_positions:32}"
WORDS = "the quick brown fox jumps over the lazy dog while a cat sleeps in the sun".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """40 small .txt documents (byte-level tokenizer)."""
    root = tmp_path_factory.mktemp("corpus")
    gen = torch.Generator().manual_seed(0)
    for i in range(40):
        picks = torch.randint(0, len(WORDS), (30,), generator=gen).tolist()
        (root / f"doc{i:02d}.txt").write_text(" ".join(WORDS[j] for j in picks) + ".\n")
    return root


def lm_args(corpus, run_dir, *extra):
    return [
        "data=text",
        f"data.files={corpus}/*.txt",
        "data.block_size=32",
        "data.batch_size=4",
        "data.val_fraction=0.1",
        "data.test_fraction=0.1",
        "student=hf_causal_lm",
        f"student.config={TINY}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_model_summary=false",
        "callbacks.progress_bar.refresh_rate=0",
        *extra,
    ]


def run(corpus, run_dir, *extra):
    cfg = compose_train(*lm_args(corpus, run_dir, *extra))
    train(cfg, str(run_dir))
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """A hard-label run: its checkpoint and hf_model/ serve as teacher / previous version."""
    run_dir = tmp_path_factory.mktemp("hard")
    return run_dir, run(corpus, run_dir, "target=hard")


def test_hard_run_metrics_and_hf_model(trained):
    from transformers import AutoModelForCausalLM

    from softlabel.data import ByteTokenizer

    run_dir, metrics = trained
    assert metrics["task"] == "causal_lm" and metrics["monitor"] == "val/nll"
    last = metrics["last"]
    assert last["val/ppl"] == pytest.approx(torch.exp(torch.tensor(last["val/nll"])).item())
    assert 0.0 <= last["test/acc"] <= 1.0
    assert metrics["hf_model"] == {"dir": "hf_model", "weights": "best"}
    model = AutoModelForCausalLM.from_pretrained(run_dir / "hf_model", local_files_only=True)
    assert model.get_output_embeddings().weight.shape[0] == 258
    tokenizer = ByteTokenizer.from_pretrained(run_dir / "hf_model")
    assert tokenizer.decode(tokenizer.encode("fox")) == "fox"
    # the saved model is the val-selected checkpoint's student
    state = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    saved = model.state_dict()
    for key, value in state.items():
        name = key.removeprefix("student.model.")
        if name in saved:
            torch.testing.assert_close(saved[name], value)


@pytest.mark.parametrize("target", ["ls", "kd", "kd_reverse"])
def test_targets_with_teacher_checkpoint(corpus, trained, tmp_path, target):
    teacher_run, _ = trained
    extra = [f"target={target}"]
    if target.startswith("kd"):
        extra += [
            "teacher=hf_causal_lm",
            f"teacher.checkpoint={teacher_run / 'checkpoints' / 'best.ckpt'}",
            f"teacher.model.config={TINY}",
        ]
    metrics = run(corpus, tmp_path, *extra)
    assert metrics["method"] == target
    assert metrics["global_step"] == 3
    if target.startswith("kd"):
        assert metrics["teacher_checkpoint"].endswith("best.ckpt")


def test_teacher_from_hf_directory_with_accumulation(corpus, trained, tmp_path):
    teacher_run, _ = trained
    metrics = run(
        corpus,
        tmp_path,
        "target=kd",
        "teacher=hf_causal_lm",
        f"teacher.pretrained={teacher_run / 'hf_model'}",
        "trainer.accumulate_grad_batches=2",
        "trainer.limit_train_batches=4",
    )
    assert metrics["teacher_pretrained"] == str(teacher_run / "hf_model")
    assert metrics["global_step"] == 2


def test_reloop_against_previous_version(corpus, trained, tmp_path):
    previous_run, _ = trained
    metrics = run(
        corpus,
        tmp_path,
        "target=reloop",
        f"previous.checkpoint={previous_run / 'checkpoints' / 'best.ckpt'}",
    )
    assert metrics["method"] == "reloop"


def _hf_dir(tmp_path, vocab_size):
    from softlabel.models import hf_causal_lm

    model = hf_causal_lm(
        config={"model_type": "gpt2", "n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 32},
        num_classes=vocab_size,
    )
    path = tmp_path / f"teacher{vocab_size}"
    model.save_pretrained(str(path))
    return path


def test_padded_superset_teacher_trains(corpus, tmp_path):
    teacher = _hf_dir(tmp_path, 320)
    metrics = run(
        corpus,
        tmp_path / "run",
        "target=kd",
        "teacher=hf_causal_lm",
        f"teacher.pretrained={teacher}",
    )
    assert metrics["global_step"] == 3


def test_vocabulary_mismatch_refused_before_training(corpus, tmp_path):
    teacher = _hf_dir(tmp_path, 258)
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"teacher has 258 output rows and the student 300"):
        run(
            corpus,
            run_dir,
            "target=kd",
            "+student.config.vocab_size=300",
            "teacher=hf_causal_lm",
            f"teacher.pretrained={teacher}",
        )
    assert not (run_dir / "metrics.json").exists()


def test_teacher_needs_exactly_one_source(corpus, trained, tmp_path):
    teacher_run, _ = trained
    with pytest.raises(ValueError, match="exactly one of teacher.checkpoint"):
        run(corpus, tmp_path, "target=kd", "teacher=hf_causal_lm")
    with pytest.raises(ValueError, match="exactly one of teacher.checkpoint"):
        run(
            corpus,
            tmp_path,
            "target=kd",
            "teacher=hf_causal_lm",
            f"teacher.pretrained={teacher_run / 'hf_model'}",
            f"teacher.checkpoint={teacher_run / 'checkpoints' / 'best.ckpt'}",
        )


def test_teacher_checkpoint_brings_its_architecture(corpus, trained, tmp_path):
    """teacher=hf_causal_lm teacher.checkpoint=<an LM run's checkpoint> rebuilds the
    architecture saved in the checkpoint (the student may differ); a teacher.model.config
    that contradicts it is refused before training, with both shown."""
    teacher_run, _ = trained
    ckpt = teacher_run / "checkpoints" / "last.ckpt"
    teacher = ["target=kd", "teacher=hf_causal_lm", f"teacher.checkpoint={ckpt}"]
    small = "student.config={model_type:gpt2,n_layer:1,n_embd:8,n_head:2,n_positions:32}"
    metrics = run(corpus, tmp_path / "kd", *teacher, small)
    assert metrics["teacher_checkpoint"] == str(ckpt) and metrics["global_step"] == 3
    two_layers = "{model_type:gpt2,n_layer:2,n_embd:16,n_head:2,n_positions:32}"
    with pytest.raises(
        ValueError,
        match=r"teacher\.model\.config contradicts the architecture saved with "
        r"teacher\.checkpoint=.*last\.ckpt.* in n_layer: .*'n_layer': 2.*saved: .*'n_layer': 1",
    ):
        run(corpus, tmp_path / "conflict", *teacher, f"teacher.model.config={two_layers}")
    assert not (tmp_path / "conflict" / "checkpoints").exists()


def test_older_checkpoint_takes_the_architecture_of_its_run_config(corpus, trained, tmp_path):
    """A checkpoint without the saved architecture: the student config of the run's
    .hydra/config.yaml beside checkpoints/; without one the message says what to set."""
    from omegaconf import OmegaConf

    teacher_run, _ = trained
    payload = torch.load(teacher_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert payload.pop("hf_config")["n_layer"] == 1
    old_run = tmp_path / "old"
    (old_run / "checkpoints").mkdir(parents=True)
    torch.save(payload, old_run / "checkpoints" / "last.ckpt")
    teacher = [
        "target=kd",
        "teacher=hf_causal_lm",
        f"teacher.checkpoint={old_run / 'checkpoints' / 'last.ckpt'}",
        "trainer.fast_dev_run=1",
    ]
    with pytest.raises(ValueError, match=r"records no architecture.*set teacher\.model\.config"):
        run(corpus, tmp_path / "refused", *teacher)
    (old_run / ".hydra").mkdir()
    OmegaConf.save(compose_train(*lm_args(corpus, old_run)), old_run / ".hydra" / "config.yaml")
    cfg = compose_train(*lm_args(corpus, tmp_path), *teacher)
    assert train(cfg, str(tmp_path / "run"))["global_step"] == 1


def test_previous_checkpoint_brings_its_architecture(corpus, trained, tmp_path):
    """ReLoop against a previous version of another width: previous.model null takes the
    architecture saved with previous.checkpoint, not the student's."""
    previous_run, _ = trained
    metrics = run(
        corpus,
        tmp_path,
        "target=reloop",
        "student.config.n_embd=8",
        f"previous.checkpoint={previous_run / 'checkpoints' / 'last.ckpt'}",
    )
    assert metrics["method"] == "reloop" and metrics["global_step"] == 3


def test_block_size_beyond_a_model_context_is_refused_before_training(corpus, trained, tmp_path):
    teacher_run, _ = trained
    with pytest.raises(
        ValueError,
        match=r"data\.block_size=32 is longer than the student's context: its config has "
        r"n_positions=16",
    ):
        run(corpus, tmp_path / "student", "target=hard", "student.config.n_positions=16")
    longer = ["data.block_size=64", "student.config.n_positions=64", "target=kd"]
    with pytest.raises(
        ValueError,
        match=r"data\.block_size=64 is longer than the teacher's context: its config has "
        r"n_positions=32",
    ):
        run(
            corpus,
            tmp_path / "teacher",
            *longer,
            "teacher=hf_causal_lm",
            f"teacher.pretrained={teacher_run / 'hf_model'}",
        )
    assert not (tmp_path / "student" / "checkpoints").exists()
    assert not (tmp_path / "teacher" / "checkpoints").exists()


def test_teacher_smaller_than_the_tokenizer_is_named(corpus, tmp_path):
    teacher = _hf_dir(tmp_path, 200)
    with pytest.raises(
        ValueError,
        match=r"the teacher \(teacher\.pretrained=.*teacher200'\): the model has 200 output "
        r"rows but the data's tokenizer has 258 token ids",
    ):
        run(
            corpus,
            tmp_path / "run",
            "target=kd",
            "teacher=hf_causal_lm",
            f"teacher.pretrained={teacher}",
        )


def test_hf_model_symlink_in_the_run_directory_is_refused_before_training(corpus, tmp_path):
    elsewhere = tmp_path / "precious"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "hf_model").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ValueError, match=r"hf_model' is a symbolic link .*remove the link"):
        run(corpus, run_dir, "target=hard")
    assert (elsewhere / "keep.txt").read_text() == "mine"
    assert (run_dir / "hf_model").is_symlink()
    assert not (run_dir / "checkpoints").exists()


def test_save_predictions_refused(corpus, tmp_path):
    with pytest.raises(ValueError, match="save_predictions=true"):
        run(corpus, tmp_path, "target=hard", "save_predictions=true")


def _compose_cache(*overrides):
    from hydra import compose, initialize_config_dir

    from softlabel.cache_cli import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("cache", overrides=list(overrides))


@pytest.mark.parametrize("kind", ["dense", "topk"])
def test_sequence_cache_from_the_command_and_training_from_it(corpus, trained, tmp_path, kind):
    from softlabel.cache import TeacherCache
    from softlabel.cache_cli import build_cache
    from softlabel.modules.build import build_datamodule, build_model
    from softlabel.targets import TopKLogits

    teacher_run, _ = trained
    data = lm_args(corpus, tmp_path)[:6]  # the data settings of the runs
    cfg = _compose_cache(
        *data,
        "teacher=hf_causal_lm",
        f"teacher.pretrained={teacher_run / 'hf_model'}",
        f"out={tmp_path / 'cache'}",
        f"kind={kind}",
        "k=5",
        "progress=false",
    )
    cache = TeacherCache.open(build_cache(cfg))
    datamodule = build_datamodule(cfg)
    dataset = datamodule.full_dataset()
    assert len(cache) == len(dataset) and cache.num_classes == 258
    # rows hold the teacher's logits at every position of the block with that index
    index = torch.tensor([0, len(dataset) - 1])
    ids = torch.stack([dataset[int(i)][0] for i in index])
    teacher = build_model(
        compose_train(*lm_args(corpus, tmp_path), "teacher=hf_causal_lm").teacher.model,
        datamodule,
        pretrained=str(teacher_run / "hf_model"),
    ).eval()
    with torch.no_grad():
        logits = teacher(ids)
    got = cache.lookup(index)
    if kind == "dense":
        torch.testing.assert_close(got, logits.half().float())
    else:
        assert isinstance(got, TopKLogits) and got.index.shape == (2, 32, 5)
        logp = torch.log_softmax(logits, -1)
        top = logp.topk(5, -1)
        torch.testing.assert_close(got.index, top.indices)
        torch.testing.assert_close(got.logprob, top.values, atol=1e-2, rtol=1e-3)
        rest = logp.scatter(-1, top.indices, float("-inf")).logsumexp(-1)
        torch.testing.assert_close(got.tail, rest, atol=1e-2, rtol=1e-3)
    metrics = run(
        corpus,
        tmp_path / "run",
        "target=kd",
        "teacher=cached",
        f"teacher.cache={tmp_path / 'cache'}",
    )
    assert metrics["teacher_cache"] == str(tmp_path / "cache")


@pytest.mark.parametrize("source", ["pretrained", "checkpoint"])
def test_fast_dev_run_with_live_teacher(corpus, trained, tmp_path, source):
    """A bfloat16 teacher on the CPU, from a Hugging Face directory or a checkpoint."""
    from softlabel.modules.build import build_datamodule, build_model, build_reference_provider

    teacher_run, _ = trained
    given = {
        "pretrained": f"teacher.pretrained={teacher_run / 'hf_model'}",
        "checkpoint": f"teacher.checkpoint={teacher_run / 'checkpoints' / 'last.ckpt'}",
    }[source]
    cfg = compose_train(
        *lm_args(corpus, tmp_path),
        "target=kd_jsd",
        "teacher=hf_causal_lm",
        given,
        "teacher.dtype=bfloat16",
        "trainer.fast_dev_run=2",
    )
    datamodule = build_datamodule(cfg)
    student = build_model(cfg.student, datamodule)
    provider, _ = build_reference_provider(cfg, "teacher_logits", datamodule, student)
    assert {p.dtype for p in provider.model.parameters()} == {torch.bfloat16}
    record = train(cfg, str(tmp_path))
    assert record["global_step"] == 2 and record["best"] is None
    assert record["hf_model"]["weights"] == "last"


def test_cache_of_a_bfloat16_teacher_from_a_checkpoint(corpus, trained, tmp_path):
    """softlabel-cache builds the teacher as training does: the architecture saved with
    teacher.checkpoint, held in bfloat16; the cache stores its logits."""
    from softlabel.cache import TeacherCache
    from softlabel.cache_cli import build_cache

    teacher_run, _ = trained
    cfg = _compose_cache(
        *lm_args(corpus, tmp_path)[:6],
        "teacher=hf_causal_lm",
        f"teacher.checkpoint={teacher_run / 'checkpoints' / 'last.ckpt'}",
        "teacher.dtype=bfloat16",
        f"out={tmp_path / 'cache'}",
        "progress=false",
    )
    cache = TeacherCache.open(build_cache(cfg))
    assert cache.num_classes == 258 and cache.row_shape == (32,)
    assert cache.manifest.teacher_config["checkpoint"] == str(
        teacher_run / "checkpoints" / "last.ckpt"
    )
    assert torch.isfinite(cache.lookup(torch.tensor([0, 1]))).all()


@pytest.mark.parametrize("kind", ["topk", "dense"])
def test_cache_of_a_padded_vocabulary_teacher_holds_what_the_live_path_sees(corpus, tmp_path, kind):
    """A teacher with 320 output rows for 258 token ids: the cache keeps the first 258
    logits, softmax renormalised over them, as the live teacher path does."""
    from softlabel.cache import TeacherCache
    from softlabel.cache_cli import build_cache
    from softlabel.models.hf import check_vocabularies
    from softlabel.modules.build import build_datamodule
    from softlabel.modules.frozen import frozen_model

    teacher_dir = _hf_dir(tmp_path, 320)
    cfg = _compose_cache(
        *lm_args(corpus, tmp_path)[:6],
        "teacher=hf_causal_lm",
        f"teacher.pretrained={teacher_dir}",
        f"out={tmp_path / 'cache'}",
        f"kind={kind}",
        "k=5",
        "progress=false",
    )
    cache = TeacherCache.open(build_cache(cfg))
    assert cache.num_classes == 258
    assert cache.manifest.teacher_config["teacher_output_rows"] == 320
    datamodule = build_datamodule(cfg)
    dataset = datamodule.full_dataset()
    index = torch.tensor([0, 3, len(dataset) - 1])
    ids = torch.stack([dataset[int(i)][0] for i in index])
    live, _ = frozen_model("teacher", datamodule, pretrained=str(teacher_dir))
    used = check_vocabularies(258, live.vocab_size, 258)  # what the live path's loss uses
    with torch.no_grad():
        logits = live.eval()(ids)
    assert logits.shape[-1] == 320 and used == 258
    logp = torch.log_softmax(logits[..., :used].double(), -1)  # renormalised over 258 ids
    got = cache.lookup(index)
    if kind == "dense":
        cached = torch.log_softmax(got.double(), -1)
        torch.testing.assert_close(cached, logp, atol=2e-3, rtol=0)  # fp16 logits
    else:
        top = logp.topk(5, -1)
        torch.testing.assert_close(got.index, top.indices)
        torch.testing.assert_close(got.logprob.double(), top.values, atol=2e-3, rtol=1e-3)
        rest = logp.scatter(-1, top.indices, float("-inf")).logsumexp(-1)
        torch.testing.assert_close(got.tail.double(), rest, atol=2e-3, rtol=1e-3)
        metrics = run(
            corpus,
            tmp_path / "run",
            "target=kd",
            "teacher=cached",
            f"teacher.cache={tmp_path / 'cache'}",
        )
        assert metrics["global_step"] == 3


def test_seed_sets_the_student_init_and_the_batch_order_with_a_cached_teacher(
    corpus, trained, tmp_path, monkeypatch
):
    """The run's seed, not the cache, decides the student's initial weights (optimizer.lr=0
    keeps them: hf_model/ holds the initialisation) and the order of the training blocks
    (the indices the cached teacher is asked for)."""
    from safetensors.torch import load_file

    from softlabel.cache import TeacherCache
    from softlabel.cache_cli import build_cache

    teacher_run, _ = trained
    cfg = _compose_cache(
        *lm_args(corpus, tmp_path)[:6],
        "teacher=hf_causal_lm",
        f"teacher.pretrained={teacher_run / 'hf_model'}",
        f"out={tmp_path / 'cache'}",
        "kind=dense",
        "progress=false",
    )
    build_cache(cfg)
    asked: list[list[int]] = []
    lookup = TeacherCache.lookup

    def spy(self, index):
        asked[-1] += index.tolist()
        return lookup(self, index)

    monkeypatch.setattr(TeacherCache, "lookup", spy)
    weights = []
    for i, seed in enumerate((0, 1, 0)):
        asked.append([])
        run(
            corpus,
            tmp_path / f"run{i}",
            "target=kd",
            "teacher=cached",
            f"teacher.cache={tmp_path / 'cache'}",
            f"seed={seed}",
            "optimizer.lr=0",
            "trainer.limit_train_batches=2",
        )
        weights.append(load_file(tmp_path / f"run{i}" / "hf_model" / "model.safetensors"))
    assert len(asked[0]) == 8 and asked[0] == asked[2] and asked[0] != asked[1]
    name = "transformer.h.0.attn.c_attn.weight"
    assert torch.equal(weights[0][name], weights[2][name])
    assert not torch.allclose(weights[0][name], weights[1][name])
