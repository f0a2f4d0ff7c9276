"""Unknown config keys are refused before an app runs, wherever they were written (the
command line, an experiment file, a new group option in a --config-dir, a loop
experiment); what a config may legitimately add still composes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from softlabel._conf import CONF_DIR
from softlabel._config_check import (
    NAMED_KEYS,
    OPEN_KEYS,
    UnknownKeyError,
    check_config,
    closest,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
TRAIN_KEYS = (
    "callbacks, ckpt_path, data, lm, logger, method, monitor, optimizer, previous, "
    "save_predictions, scheduler, seed, student, target, teacher, threads, trainer"
)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _check(config_name: str, schema: str, *overrides: str, config_dir: Path | None = None):
    """Compose like the app (with ``config_dir`` on the search path) and check the keys."""
    extra = [f"hydra.searchpath=[file://{config_dir}]"] if config_dir else []
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name, overrides=[*extra, *overrides], return_hydra_config=True)
        check_config(cfg, schema)
    return cfg


def _app(main, *argv: str, cwd: Path, monkeypatch) -> None:
    """``softlabel-<app> ARGV`` in this process, in ``cwd``; errors propagate."""
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.setattr(sys, "argv", ["softlabel-app", *argv])
    main()


def test_closest_key():
    assert closest("job", ["jobs", "seeds", "out"]) == "jobs"
    assert closest("seedz", ["jobs", "seeds", "out"]) == "seeds"
    assert closest("Seeds", ["seeds"]) == "seeds"
    assert closest("xyz", ["jobs", "seeds"]) is None


def test_an_experiment_file_with_a_misspelt_key_is_refused_before_anything_is_written(
    tmp_path, monkeypatch
):
    from softlabel.train import main

    configs = tmp_path / "configs"
    _write(
        configs / "experiment" / "typo.yaml",
        "# @package _global_\nseedz: 3\ntrainer:\n  max_epoch: 5\n",
    )
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(UnknownKeyError) as refused:
        _app(
            main, "--config-dir", str(configs), "experiment=typo", cwd=work, monkeypatch=monkeypatch
        )
    message = str(refused.value)
    assert (
        f"experiment/typo.yaml: unknown key `seedz` (did you mean `seed`?); allowed keys at "
        f"the top level: {TRAIN_KEYS}" in message
    )
    assert (
        "experiment/typo.yaml: unknown key `trainer.max_epoch` (did you mean `max_epochs`?); "
        "allowed keys under `trainer` (trainer=cpu): _target_, accelerator," in message
    )
    assert list(work.iterdir()) == []  # no run directory, no .hydra/, no log


def test_a_misspelt_key_on_the_command_line_gets_the_closest_key(tmp_path, monkeypatch):
    from softlabel.train import main

    with pytest.raises(UnknownKeyError, match=r"unknown key `trainer.max_epoch` \(did you mean "):
        _app(main, "--cfg", "job", "trainer.max_epoch=1", cwd=tmp_path, monkeypatch=monkeypatch)
    with pytest.raises(UnknownKeyError, match="`seedz` .did you mean `seed`.*at the top level"):
        _app(main, "-m", "seedz=0,1", cwd=tmp_path, monkeypatch=monkeypatch)
    assert list(tmp_path.iterdir()) == []


def test_a_new_group_option_is_checked_by_its_target_and_every_job_of_a_sweep_is_checked(
    tmp_path, monkeypatch
):
    """A new option is its own object: its keys must be the arguments of its _target_; an
    option that extends a shipped one must keep the shipped keys. A multirun over options
    is checked job by job before the sweep directory is made."""
    from softlabel.train import main

    configs = tmp_path / "configs"
    _write(configs / "student" / "tiny.yaml", "_target_: softlabel.models.MLP\nhiden: [8]\n")
    _write(configs / "data" / "small.yaml", "defaults:\n  - digits\nsubsett: 100\n")
    with pytest.raises(UnknownKeyError) as refused:
        _check("train", "train", "student=tiny", "data=small", config_dir=configs)
    message = str(refused.value)
    assert "student/tiny.yaml: unknown key `student.hiden` (did you mean `hidden`?)" in message
    assert "data/small.yaml: unknown key `data.subsett` (did you mean `subset`?)" in message
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(UnknownKeyError, match="student.hiden"):
        _app(
            main,
            "--config-dir",
            str(configs),
            "-m",
            "student=mlp,tiny",
            cwd=work,
            monkeypatch=monkeypatch,
        )
    assert list(work.iterdir()) == []


def test_what_a_config_may_add(tmp_path):
    """Arguments of a node's _target_ (teacher.dtype, a Trainer argument), a new named
    callback with a _target_, an open mapping (a Hugging Face config), a value used by an
    interpolation, a new option's arguments, and keys the command line adds with +."""
    configs = tmp_path / "configs"
    _write(
        configs / "experiment" / "extras.yaml",
        "# @package _global_\n"
        "defaults:\n  - override /teacher: mlp_large\n  - override /target: kd\n"
        "epochs: 3\n"
        "trainer:\n  max_epochs: ${epochs}\n  check_val_every_n_epoch: 2\n"
        "teacher:\n  dtype: bfloat16\n"
        "callbacks:\n  early:\n"
        "    _target_: lightning.pytorch.callbacks.EarlyStopping\n    monitor: val/nll\n",
    )
    _write(configs / "student" / "tiny.yaml", "_target_: softlabel.models.MLP\nhidden: [8]\n")
    cfg = _check(
        "train",
        "train",
        "experiment=extras",
        "student=tiny",
        "+trainer.profiler=simple",
        "++lm.extra=1",
        config_dir=configs,
    )
    assert cfg.trainer.max_epochs == 3 and cfg.teacher.dtype == "bfloat16"
    lm = _check("train", "train", "data=text", "student=hf_causal_lm", "+student.config.n_inner=64")
    assert lm.student.config.n_inner == 64


def test_open_and_named_mappings_are_documented():
    text = DOCS.read_text()
    for key in (*OPEN_KEYS, *NAMED_KEYS):
        assert f"`{key}`" in text, key


def test_a_loop_experiment_with_an_old_key_name_is_refused(tmp_path):
    configs = tmp_path / "configs"
    _write(
        configs / "loop" / "experiment" / "mine.yaml",
        "# @package _global_\nnum_threads: 1\ntrain:\n  epoch: 3\n",
    )
    with pytest.raises(UnknownKeyError) as refused:
        _check("loop", "loop", "+loop/experiment=mine", config_dir=configs)
    message = str(refused.value)
    assert "mine.yaml: unknown key `num_threads` (did you mean `threads`?)" in message
    assert (
        "unknown key `train.epoch` (did you mean `epochs`?); allowed keys under `train`" in message
    )


@pytest.mark.parametrize("name", ["reloop_ctr", "reloop_digits"])
def test_shipped_loop_experiments_pass(name):
    cfg = _check("loop", "loop", f"+loop/experiment={name}")
    assert cfg.threads == 1


def test_cache_shares_threads(tmp_path, monkeypatch, capsys):
    from softlabel.cache_cli import main

    _app(main, "threads=1", "--cfg", "job", cwd=tmp_path, monkeypatch=monkeypatch)
    assert "threads: 1" in capsys.readouterr().out
    with pytest.raises(UnknownKeyError, match="`thread` .did you mean `threads`"):
        _app(main, "thread=1", "--cfg", "job", cwd=tmp_path, monkeypatch=monkeypatch)
    assert list(tmp_path.iterdir()) == []


def test_a_primary_config_of_your_own_must_build_on_the_apps(tmp_path):
    configs = tmp_path / "configs"
    _write(configs / "mine.yaml", "defaults:\n  - train\n  - _self_\nseed: 3\n")
    _write(configs / "typo.yaml", "defaults:\n  - train\n  - _self_\nsed: 3\n")
    _write(configs / "alone.yaml", "seed: 3\n")
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        searchpath = f"hydra.searchpath=[file://{CONF_DIR}]"
        check_config(compose("mine", [searchpath], return_hydra_config=True), "train")
        with pytest.raises(UnknownKeyError, match=r"typo.yaml: unknown key `sed` \(did you mean"):
            check_config(compose("typo", [searchpath], return_hydra_config=True), "train")
        with pytest.raises(
            UnknownKeyError, match=r"does not build on .*defaults: \[train, _self_\]"
        ):
            check_config(compose("alone", [searchpath], return_hydra_config=True), "train")


RECIPE = """defaults:
  - compare/base
  - _self_
name: typo
base: [data=digits, trainer.max_epochs=1]
methods:
  hard: [target=hard]
  kd: {overrides: [target=kd, teacher=mlp_small], teachr: small}
pretrained:
  small: {overides: [student=mlp_small, target=hard], checkpoint: last}
"""


def test_a_recipe_with_misspelt_keys_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    """The misspelt top-level keys of a softlabel-compare recipe, and misspelt keys of a
    method and a pretrained entry: every one refused, nothing trained or written."""
    from softlabel.compare.cli import main

    recipe = _write(tmp_path / "configs" / "recipe.yaml", RECIPE + "job: 2\nseedz: [0, 1]\n")
    work = tmp_path / "work"
    work.mkdir()
    argv = ["--config-dir", str(recipe.parent), "--config-name", "recipe", f"out={work}/cmp"]
    with pytest.raises(UnknownKeyError) as refused:
        _app(main, *argv, cwd=work, monkeypatch=monkeypatch)
    message = str(refused.value)
    for line in (
        "recipe.yaml: unknown key `job` (did you mean `jobs`?); allowed keys at the top "
        "level: base, baseline, dry_run, env, extra, headline, jobs, launch, log_tail_lines,",
        "recipe.yaml: unknown key `seedz` (did you mean `seeds`?)",
        "recipe.yaml: unknown key `methods.kd.teachr` (did you mean `teacher`?); allowed "
        "keys under `methods.kd`: overrides, previous, teacher",
        "recipe.yaml: unknown key `pretrained.small.overides` (did you mean `overrides`?); "
        "allowed keys under `pretrained.small`: checkpoint, overrides, seed",
    ):
        assert line in message
    assert list(work.iterdir()) == []


def test_the_command_a_user_types_prints_the_refusal_and_writes_nothing(tmp_path):
    import os
    import subprocess

    recipe = _write(tmp_path / "configs" / "recipe.yaml", RECIPE.replace("teachr", "teacher"))
    _write(recipe, recipe.read_text().replace("overides", "overrides") + "job: 2\n")
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    command = [sys.executable, "-m", "softlabel.compare.cli", "--config-dir", str(recipe.parent)]
    done = subprocess.run(
        [*command, "--config-name", "recipe"], cwd=work, capture_output=True, text=True, env=env
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "recipe.yaml: unknown key `job` (did you mean `jobs`?)" in done.stderr
    assert list(work.iterdir()) == []
