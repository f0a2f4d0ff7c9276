"""Every comparison recipe under recipes/ composes, plans, and every run it would launch
composes with softlabel-train's config and instantiates its target (no training)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from softlabel._config_check import check_config
from softlabel.compare.plan import ENTRY_KEYS, plan_from_config
from softlabel.targets import TargetSource
from softlabel.train import CONF_DIR

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
COMPARE_CONFIGS = sorted(
    path
    for path in RECIPES.glob("*/*.yaml")
    if "compare/base" in path.read_text()  # softlabel-compare configs, not experiment files
)


def _recipe(path: Path, tmp_path: Path) -> dict:
    overrides = [f"hydra.searchpath=[file://{CONF_DIR}]", f"out={tmp_path}"]
    # paths that a recipe's run.sh sets (its teacher caches, a teacher file): any path composes
    for key in re.findall(r"^(\w+): \?\?\?", path.read_text(), flags=re.MULTILINE):
        overrides.append(f"{key}={tmp_path / key}")
    with initialize_config_dir(config_dir=str(path.parent), version_base="1.3"):
        checked = compose(path.stem, overrides=overrides, return_hydra_config=True)
        check_config(checked, "compare/base", entries=ENTRY_KEYS)  # softlabel-compare's keys
        cfg = compose(path.stem, overrides=overrides)
    config = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(config, dict)
    return config


def _train_cfg(overrides: tuple[str, ...], config_dir: Path):
    kept = [o for o in overrides if not o.startswith("hydra.")]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=[f"hydra.searchpath=[file://{config_dir}]", *kept])


def test_recipes_are_found():
    names = {p.parent.name for p in COMPARE_CONFIGS}
    assert {"soft_label_sources", "tf_kd_self", "compare_digits", "ls_teacher"} <= names


@pytest.mark.parametrize("path", COMPARE_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_run_of_a_recipe_composes(path, tmp_path):
    plan = plan_from_config(_recipe(path, tmp_path))
    assert plan.methods and plan.seeds
    seed = plan.seeds[0]
    runs = [(m.name, plan.method_overrides(m, seed)) for m in plan.methods]
    runs += [(p.name, (*plan.base, *p.overrides)) for p in plan.used_pretrained()]
    for name, overrides in runs:
        cfg = _train_cfg(overrides, path.parent)
        assert isinstance(instantiate(cfg.target), TargetSource), name


def test_soft_label_sources_runs_the_papers_settings(tmp_path):
    """kd_std at the authors' T = 2 and alpha = 9/9.1; DIST at their CE + 2 (inter + intra);
    DKD with the warm-up scaled to 2 of 20 epochs (mdistiller: 20 of 240)."""
    path = RECIPES / "soft_label_sources" / "recipe.yaml"
    plan = plan_from_config(_recipe(path, tmp_path))
    methods = {m.name: m for m in plan.methods}
    assert len(plan.seeds) >= 3 and {"hard", "ls", "kd"} <= set(methods)
    std = instantiate(_train_cfg(plan.method_overrides(methods["kd_std"], 0), path.parent).target)
    assert std.standardize and std.temperature == 2.0 and std.alpha == pytest.approx(9 / 9.1)
    dist = instantiate(_train_cfg(plan.method_overrides(methods["dist"], 0), path.parent).target)
    assert dist.temperature == 1.0 and dist.alpha / (1 - dist.alpha) == pytest.approx(2.0)
    dkd = instantiate(_train_cfg(plan.method_overrides(methods["dkd"], 0), path.parent).target)
    for epoch, factor in ((1, 0.5), (2, 1.0), (20, 1.0)):
        dkd.set_progress((epoch - 1) / 20)
        assert dkd.alpha == pytest.approx(factor) and dkd.beta == pytest.approx(8 * factor)
