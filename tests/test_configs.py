"""Every option of every config group composes and instantiates (new files are picked up)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from softlabel._config_check import check_config
from softlabel.train import CONF_DIR

GROUPS = (
    "data",
    "student",
    "teacher",
    "previous",
    "target",
    "optimizer",
    "scheduler",
    "trainer",
    "logger",
    "callbacks",
    "experiment",
)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in Path(CONF_DIR, group).glob("*.yaml"))


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_every_group_has_options_and_defaults_exist():
    defaults = OmegaConf.load(os.path.join(CONF_DIR, "train.yaml")).defaults
    chosen = {k: v for d in defaults if isinstance(d, dict) for k, v in d.items()}
    for group in GROUPS:
        assert _options(group), group
        if chosen.get(group) is not None:
            assert chosen[group] in _options(group), group
    cfg = _compose()
    assert cfg.target._target_ == "softlabel.targets.UniformPrior" and cfg.target.smoothing == 0.1
    assert cfg.data.source._target_ == "softlabel.data.digits" and cfg.seed == 0


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "table.csv"
    rows = ["a,b,label"] + [f"{i % 7},{i % 3},{i % 2}" for i in range(40)]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("option", _options("data"))
def test_data_configs(option, table, tmp_path):
    overrides = [f"data={option}"]
    if option == "tabular":
        overrides += [
            f"data.source.path={table}",
            "data.source.features=[a,b]",
            "data.source.label=label",
        ]
    cfg = _compose(*overrides)
    datamodule = instantiate(cfg.data)
    assert datamodule.batch_size == cfg.data.batch_size
    if "source" in cfg.data:  # data=text reads files itself (tests/test_text_data.py)
        source = instantiate(cfg.data.source)
        assert callable(source)
    if option in ("tabular", "digits", "synthetic"):
        datamodule.setup("fit")
        x, y, index = next(iter(datamodule.train_dataloader()))
        assert x.shape[1:] == tuple(datamodule.input_shape) and y.shape == index.shape


def _forward(model_cfg, shape=(3, 16, 16)):
    from softlabel.models import build_model

    model = build_model(model_cfg, shape, 10)
    out = model.eval()(torch.zeros(2, *shape))
    assert out.shape == (2, 10)


#: Model options for data=text (causal language models), composed with that data.
LM_OPTIONS = ("hf_causal_lm", "hf_llama")
#: The reference providers that teacher and previous configs name by _target_.
LIVE = "softlabel.modules.providers.live_teacher"
CACHED = "softlabel.modules.providers.cached_teacher"
PREVIOUS = "softlabel.modules.providers.previous_model"


@pytest.mark.parametrize("option", [o for o in _options("student") if o not in LM_OPTIONS])
def test_student_configs(option):
    _forward(_compose(f"student={option}").student)


@pytest.mark.parametrize("option", LM_OPTIONS)
def test_language_model_configs(option, tmp_path):
    pytest.importorskip("transformers")
    from softlabel.modules.build import build_model

    for i in range(20):
        (tmp_path / f"doc{i}.txt").write_text(f"a few words, number {i} " * 5)
    cfg = _compose(
        "data=text", f"data.files={tmp_path}/*.txt", "data.block_size=16", f"student={option}"
    )
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    student = build_model(cfg.student, datamodule)
    assert student.vocab_size == datamodule.vocab_size == 258
    assert student.eval()(torch.zeros(2, 16, dtype=torch.long)).shape == (2, 16, 258)
    assert student.linear_head
    if option not in _options("teacher"):
        return
    teacher_cfg = _compose("data=text", f"teacher={option}", "teacher.checkpoint=x.ckpt").teacher
    assert teacher_cfg._target_ == LIVE and teacher_cfg.checkpoint == "x.ckpt"
    assert teacher_cfg.model.config is None  # the architecture saved with the checkpoint
    tiny = "{model_type:gpt2,n_layer:1,n_embd:16,n_head:2,n_positions:16}"
    given = _compose("data=text", f"teacher={option}", f"teacher.model.config={tiny}")
    teacher = build_model(given.teacher.model, datamodule, role="teacher")
    assert teacher.vocab_size == 258 and teacher.linear_head


@pytest.mark.parametrize("option", _options("trainer"))
def test_trainer_run_length_keys_are_set_without_plus(option):
    """trainer.max_steps / trainer.max_time, which the run-length checks ask for, are keys
    of every trainer config with Lightning's own defaults."""
    import inspect

    import lightning as L

    defaults = inspect.signature(L.Trainer).parameters
    cfg = _compose(f"trainer={option}")
    assert cfg.trainer.max_steps == defaults["max_steps"].default == -1
    assert cfg.trainer.max_time is defaults["max_time"].default is None
    cfg = _compose(f"trainer={option}", "trainer.max_steps=60", "trainer.max_time=00:00:05:00")
    assert (cfg.trainer.max_steps, cfg.trainer.max_time) == (60, "00:00:05:00")


@pytest.mark.parametrize("group", ["teacher", "previous"])
def test_teacher_and_previous_configs(group):
    for option in _options(group):
        if option in ("none", "cached", *LM_OPTIONS):
            continue
        cfg = _compose(f"{group}={option}", f"{group}.checkpoint=x.ckpt")
        assert cfg[group].checkpoint == "x.ckpt"
        assert cfg[group]._target_ == (LIVE if group == "teacher" else PREVIOUS)
        # the same model config as the student option (built in test_student_configs)
        assert cfg[group].model == _compose(f"student={option}").student
    assert _compose().previous.model is None  # null: the student's architecture
    assert _compose().previous._target_ == PREVIOUS


@pytest.mark.parametrize("option", _options("target"))
def test_target_configs(option):
    source = instantiate(_compose(f"target={option}").target)
    assert source.name == option  # the method name recorded in metrics.json


@pytest.mark.parametrize("option", _options("optimizer"))
def test_optimizer_configs(option):
    factory = instantiate(_compose(f"optimizer={option}").optimizer)
    optimizer = factory([torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(optimizer, torch.optim.Optimizer)


@pytest.mark.parametrize("option", _options("scheduler"))
def test_scheduler_configs(option):
    from softlabel.modules.build import scheduler_parts

    factory, interval = scheduler_parts(_compose(f"scheduler={option}"))
    assert interval in ("step", "epoch")
    if option == "none":
        assert factory is None
        return
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    scheduler = factory(optimizer) if option == "multistep" else factory(optimizer, T_max=10)
    assert scheduler.get_last_lr() == [1.0]


@pytest.mark.parametrize("option", _options("trainer"))
def test_trainer_configs(option, tmp_path):
    import lightning as L

    cfg = _compose(f"trainer={option}")
    if option == "fsdp":  # Lightning's FSDP needs GPUs: the strategy alone is built here
        from lightning.pytorch.strategies import FSDPStrategy

        assert isinstance(instantiate(cfg.trainer.strategy), FSDPStrategy)
        assert cfg.trainer.precision == "bf16-mixed"
        if not torch.cuda.is_available():
            return
    trainer = instantiate(cfg.trainer, accelerator="cpu", logger=False, default_root_dir=tmp_path)
    assert isinstance(trainer, L.Trainer) and trainer.max_epochs == cfg.trainer.max_epochs
    if option == "fsdp2":  # one data-parallel group over every process, one checkpoint file
        from lightning.pytorch.strategies import ModelParallelStrategy

        assert isinstance(trainer.strategy, ModelParallelStrategy)
        node = cfg.trainer.strategy
        assert node.data_parallel_size == cfg.trainer.devices == 2
        assert node.tensor_parallel_size == 1 and node.save_distributed_checkpoint is False


@pytest.mark.parametrize("option", _options("logger"))
def test_logger_configs(option, tmp_path):
    logger = instantiate(_compose(f"logger={option}").logger, save_dir=str(tmp_path))
    assert str(tmp_path) in logger.log_dir


@pytest.mark.parametrize("option", _options("callbacks"))
def test_callback_configs(option, tmp_path):
    import lightning as L

    nodes = _compose(f"callbacks={option}").callbacks
    callbacks = [
        instantiate(n, **({"monitor": "val/nll"} if "Checkpoint" in n._target_ else {}))
        for n in nodes.values()
    ]
    assert all(isinstance(c, L.Callback) for c in callbacks)
    assert any(type(c).__name__ == "ModelCheckpoint" and c.save_last for c in callbacks)


@pytest.mark.parametrize("option", _options("experiment"))
def test_experiment_configs(option):
    overrides = [f"experiment={option}", *(["teacher.checkpoint=x.ckpt"] if "kd" in option else [])]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        # every key an experiment sets is one of softlabel-train's (no unknown key)
        check_config(compose("train", overrides=overrides, return_hydra_config=True), "train")
    cfg = _compose(*overrides)
    OmegaConf.resolve(cfg)
    names = ("hard", "ls", "ls_prior", "kd", "reloop", "dkd", "kd_std")
    assert instantiate(cfg.target).name in names


@pytest.mark.parametrize("teacher", _options("teacher"))
def test_teacher_free_and_dist_targets_compose_with_every_teacher(teacher, tmp_path):
    """dist needs a teacher (a live architecture or the cache); ols, tf_kd and ls_adaptive
    need none, so any teacher config is ignored."""
    from softlabel.modules.build import build_reference_provider

    given = {"none": [], "cached": [f"teacher.cache={tmp_path}"]}
    extra = given.get(teacher, ["teacher.checkpoint=x.ckpt"])
    for target in ("dist", "ols", "tf_kd", "ls_adaptive", "ls_confidence"):
        cfg = _compose(f"target={target}", f"teacher={teacher}", *extra)
        source = instantiate(cfg.target)
        if target != "dist":
            assert source.reference is None
            assert build_reference_provider(cfg, source.reference, None) == (None, {})
        elif teacher == "none":
            with pytest.raises(ValueError, match="needs a teacher"):
                build_reference_provider(cfg, source.reference, None)
        else:
            assert source.reference == "teacher_logits" and cfg.teacher._target_ in (LIVE, CACHED)


#: Targets that read teacher logits: each composes with a live and a cached teacher, and
#: teacher=none is refused before training.
TEACHER_TARGETS = ("kd", "kd_reverse", "kd_jsd", "kd_tvd", "kd_std", "dkd")


@pytest.mark.parametrize("option", TEACHER_TARGETS)
def test_teacher_targets_compose_with_live_and_cached_teachers(option, tmp_path):
    from softlabel.modules.build import build_reference_provider

    for teacher, target, extra in (
        ("mlp", LIVE, ["teacher.checkpoint=x.ckpt"]),
        ("cached", CACHED, [f"teacher.cache={tmp_path}"]),
        ("none", None, []),
    ):
        cfg = _compose(f"target={option}", f"teacher={teacher}", *extra)
        source = instantiate(cfg.target)
        assert (source.name, source.reference, cfg.teacher.get("_target_")) == (
            option,
            "teacher_logits",
            target,
        )
    with pytest.raises(ValueError, match="needs a teacher"):
        build_reference_provider(cfg, source.reference, None)


def test_dkd_warmup_schedule_from_the_command_line():
    value = (
        "{_target_:softlabel.targets.decoupled.warmup_schedule,value:8.0,"
        "epochs:${trainer.max_epochs}}"
    )
    cfg = _compose("target=dkd", "trainer.max_epochs=40", f"target.beta={value}")
    source = instantiate(cfg.target)
    source.set_progress(0.0)
    assert source.beta == pytest.approx(0.4)  # 8 * 1/20 in the first of 40 epochs
    source.set_progress(19.5 / 40)  # epoch 20
    assert source.beta == pytest.approx(8.0)


@pytest.mark.parametrize(
    "option", ["cifar100_teacher", "cifar100_kd", "cifar100_dkd", "cifar100_kd_std"]
)
def test_cifar100_experiments_follow_mdistillers_schedule(option):
    """SGD lr 0.05, momentum 0.9, wd 5e-4, batch 64, 240 epochs, lr x0.1 at epochs 150, 180,
    210 (kd_std: lr and wd scaled for its loss / 9.1, see its config); composition only."""
    from softlabel.modules.build import scheduler_parts

    extra = [] if option == "cifar100_teacher" else ["teacher.checkpoint=x.ckpt"]
    cfg = _compose(f"experiment={option}", *extra)
    OmegaConf.resolve(cfg)
    assert cfg.trainer.max_epochs == 240 and cfg.data.batch_size == 64
    assert cfg.data.source._target_ == "softlabel.data.cifar100"
    student = "resnet32x4" if option == "cifar100_teacher" else "resnet8x4"
    assert cfg.student._target_ == f"softlabel.models.{student}"
    if option != "cifar100_teacher":
        assert cfg.teacher.model._target_ == "softlabel.models.resnet32x4"
    scale = 9.1 if option == "cifar100_kd_std" else 1.0
    optimizer = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(2))])
    group = optimizer.param_groups[0]
    assert group["momentum"] == 0.9 and not group["nesterov"]
    assert group["weight_decay"] == pytest.approx(5e-4 / scale)
    factory, interval = scheduler_parts(cfg)
    scheduler = factory(optimizer)
    assert interval == "epoch"
    lrs = []
    for _ in range(240):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    for epoch, lr in ((0, 0.05), (149, 0.05), (150, 5e-3), (180, 5e-4), (210, 5e-5), (239, 5e-5)):
        assert lrs[epoch] == pytest.approx(lr * scale), epoch
    source = instantiate(cfg.target)
    if option == "cifar100_dkd":
        for epoch in (1, 10, 20, 21, 240):  # mdistiller's warm-up, epochs counted from 1
            source.set_progress((epoch - 1) / 240)
            factor = min(epoch / 20, 1.0)
            assert source.alpha == pytest.approx(factor) and source.beta == pytest.approx(
                8 * factor
            )
        assert source.temperature == 4.0 and source.ce_weight == 1.0
    elif option == "cifar100_kd":
        assert (source.alpha, source.temperature, source.standardize) == (0.9, 4.0, False)
    elif option == "cifar100_kd_std":
        # the authors' 0.1 * CE + 9 * T^2 KL at T = 2, divided by 9.1
        assert source.alpha == pytest.approx(9 / 9.1) and 1 - source.alpha == pytest.approx(
            0.1 / 9.1
        )
        assert source.temperature == 2.0 and source.standardize
