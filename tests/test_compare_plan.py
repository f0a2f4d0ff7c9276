"""Comparison configs: validation, pretrained-model wiring and the exact commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from softlabel.compare import plan_from_config


def config(tmp_path: Path, **changes) -> dict:
    base = {
        "out": str(tmp_path / "cmp"),
        "base": ["data=digits"],
        "seeds": [0, 1],
        "methods": {"hard": ["target=hard"], "kd": ["target=kd", "teacher=mlp_large"]},
        "pretrained": {"teacher": ["student=mlp_large", "target=hard"]},
        "train_command": ["train"],
    }
    return {**base, **changes}


def test_kd_uses_the_teacher_trained_once(tmp_path: Path) -> None:
    plan = plan_from_config(config(tmp_path))
    jobs = plan.jobs()
    assert [(j.name, j.role) for j in jobs] == [
        ("teacher", "pretrained"),
        ("hard", "method"),
        ("kd", "method"),
    ]
    out = tmp_path / "cmp"
    assert jobs[0].argv == (
        "train",
        "-m",
        "data=digits",
        "student=mlp_large",
        "target=hard",
        "method=teacher",
        "seed=0",
        f"hydra.sweep.dir={out}/pretrained",
        "hydra.sweep.subdir=teacher",
    )
    ckpt = f"teacher.checkpoint={out}/pretrained/teacher/checkpoints/best.ckpt"
    assert jobs[2].argv == (
        "train",
        "-m",
        "data=digits",
        "target=kd",
        "teacher=mlp_large",
        ckpt,
        "method=kd",
        "seed=0,1",
        f"hydra.sweep.dir={out}/runs/kd",
        "hydra.sweep.subdir=seed${seed}",
    )
    assert jobs[2].needs == ("teacher",) and jobs[1].needs == ()
    assert jobs[2].run_dirs == {0: out / "runs/kd/seed0", 1: out / "runs/kd/seed1"}
    assert ckpt not in jobs[1].argv


def test_unused_pretrained_is_not_trained_and_per_run_launch(tmp_path: Path) -> None:
    plan = plan_from_config(
        config(tmp_path, methods={"hard": ["target=hard"]}, launch="per_run", save_predictions=True)
    )
    jobs = plan.jobs()
    assert [j.log_name for j in jobs] == ["hard_seed0", "hard_seed1"]
    assert "seed=1" in jobs[1].argv and "++save_predictions=true" in jobs[1].argv
    assert plan.jobs({"hard": [1]})[0].run_dirs == {1: tmp_path / "cmp/runs/hard/seed1"}


def test_explicit_teacher_previous_and_opt_out(tmp_path: Path) -> None:
    methods = {
        "kd_ls": {"overrides": ["target=kd"], "teacher": "ls_teacher"},
        "kd_none": {"overrides": ["target=kd", "teacher.checkpoint=/my.ckpt"]},
        "reloop": ["target=reloop"],
        "kd_off": {"overrides": ["target=kd"], "teacher": None},
    }
    pretrained = {
        "teacher": ["target=hard"],
        "ls_teacher": {"overrides": ["target=ls"], "seed": 7},
        "previous": ["trainer.max_epochs=2"],
    }
    plan = plan_from_config(config(tmp_path, methods=methods, pretrained=pretrained))
    spec = {m.name: m.checkpoints for m in plan.methods}
    assert spec == {
        "kd_ls": (("teacher.checkpoint", "ls_teacher"),),
        "kd_none": (),
        "reloop": (("previous.checkpoint", "previous"),),
        "kd_off": (),
    }
    assert [p.name for p in plan.used_pretrained()] == ["ls_teacher", "previous"]
    assert "seed=7" in plan.jobs()[0].argv


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"seeds": []}, ValueError, "seeds must be"),
        ({"seeds": [0, 0]}, ValueError, "distinct"),
        ({"methods": {}}, ValueError, "methods must map"),
        ({"methods": {"a b": ["target=hard"]}}, ValueError, "method name 'a b'"),
        ({"methods": {"hard": ["seed=3"]}}, ValueError, "may not set 'seed=3'"),
        ({"methods": {"hard": "target=hard"}}, TypeError, "list of override strings"),
        ({"methods": {"hard": ["target"]}}, ValueError, "key=value"),
        (
            {"methods": {"kd": {"overrides": [], "teacher": "nope"}}},
            ValueError,
            "'nope' is not a pretrained",
        ),
        (
            {"methods": {"kd": {"overrides": [], "bogus": 1}}},
            ValueError,
            "unknown key `methods.kd.bogus`; allowed keys under `methods.kd`: overrides, "
            "previous, teacher",
        ),
        (
            {"methods": {"kd": {"overides": []}}},
            ValueError,
            r"`methods.kd.overides` \(did you mean `overrides`\?\)",
        ),
        ({"threads": 0}, ValueError, r"threads=0; allowed: null"),
        ({"threads": 2, "extra": ["threads=1"]}, ValueError, "set the training runs' threads once"),
        ({"methods": {"teacher": ["target=hard"]}}, ValueError, "both a method and a pretrained"),
        ({"launch": "parallel"}, ValueError, "launch must be one of"),
        ({"out": ""}, ValueError, "out must name"),
        ({"base": ["hydra.sweep.dir=x"]}, ValueError, "may not set"),
    ],
)
def test_bad_config_raises(tmp_path: Path, changes: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        plan_from_config(config(tmp_path, **changes))


def test_threads_reach_every_training_run(tmp_path: Path) -> None:
    plan = plan_from_config(config(tmp_path, threads=1))
    assert all("threads=1" in job.argv for job in plan.jobs())
    assert not any("threads=1" in job.argv for job in plan_from_config(config(tmp_path)).jobs())


def test_paths_with_special_characters_are_quoted(tmp_path: Path) -> None:
    plan = plan_from_config(config(tmp_path / "a b"))
    assert f"hydra.sweep.dir='{tmp_path}/a b/cmp/runs/hard'" in plan.jobs()[1].argv


def test_a_pretrained_entry_can_hand_over_its_last_epoch(tmp_path: Path) -> None:
    pretrained = {"teacher": {"overrides": ["student=mlp_large"], "checkpoint": "last"}}
    plan = plan_from_config(config(tmp_path, pretrained=pretrained, headline="last"))
    kd = next(m for m in plan.methods if m.name == "kd")
    expected = tmp_path / "cmp" / "pretrained" / "teacher" / "checkpoints" / "last.ckpt"
    assert plan.checkpoint_overrides(kd) == [f"teacher.checkpoint={expected}"]
    assert plan.headline == "last"


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        (
            {"pretrained": {"teacher": {"overrides": [], "checkpoint": "final"}}},
            "checkpoint.*final",
        ),
        (
            {"pretrained": {"teacher": {"overrides": [], "epochs": 3}}},
            "unknown key `pretrained.teacher.epochs`; allowed keys under `pretrained.teacher`: "
            "checkpoint, overrides, seed",
        ),
        ({"headline": "test"}, r"headline must be one of \['best', 'last'\]"),
    ],
)
def test_bad_checkpoint_and_headline_choices_are_refused(tmp_path: Path, changes, pattern) -> None:
    with pytest.raises(ValueError, match=pattern):
        plan_from_config(config(tmp_path, **changes))


def test_every_target_that_needs_a_model_gets_its_checkpoint_wired() -> None:
    import importlib

    import yaml

    from softlabel._conf import CONF_DIR
    from softlabel.compare.plan import checkpoint_key

    needs = {"teacher_logits": "teacher.checkpoint", "previous_probs": "previous.checkpoint"}
    for path in sorted((Path(CONF_DIR) / "target").glob("*.yaml")):
        module, _, name = yaml.safe_load(path.read_text())["_target_"].rpartition(".")
        reference = getattr(importlib.import_module(module), name).reference
        wired = (checkpoint_key(path.stem) or (None,))[0]
        assert wired == needs.get(reference), path.name
