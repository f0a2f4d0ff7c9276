"""The wheel: built from a copy of the checkout, installed (not editable) into a fresh
virtual environment, and run from an unrelated directory. Its configs come from the
packaged ``softlabel/conf``; nothing is downloaded (dependencies are read from the
environment running the tests)."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    not (ROOT / "pyproject.toml").is_file() or not (ROOT / "conf" / "train.yaml").is_file(),
    reason="needs a checkout (pyproject.toml and conf/)",
)

TIMEOUT = 300
QUICK = [
    "trainer.max_epochs=1",
    "data.subset=200",
    "student.hidden=[16]",
    "callbacks.progress_bar.refresh_rate=0",
    "trainer.enable_model_summary=false",
    "trainer.num_sanity_val_steps=0",
    "threads=1",
]


def _source_packages() -> list[str]:
    return sorted(
        ".".join(path.parent.relative_to(ROOT).parts)
        for path in (ROOT / "softlabel").rglob("__init__.py")
        if "__pycache__" not in path.parts
    )


def test_pyproject_lists_every_package():
    """The packages are listed in pyproject.toml (so that conf/ can map to softlabel.conf):
    a new subpackage must be added there, or the wheel leaves it out."""
    tomllib = pytest.importorskip("tomllib")
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    missing = sorted(set(_source_packages()) - listed)
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"
    assert setuptools["package-dir"] == {"softlabel.conf": "conf"}
    assert listed - set(_source_packages()) == {"softlabel.conf"}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(
        PYTHONNOUSERSITE="1",
        PYTHONWARNINGS="ignore::DeprecationWarning",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        OMP_NUM_THREADS="1",
    )
    return env


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


class Installed:
    def __init__(self, wheel: Path, venv: Path, purelib: Path, cwd: Path) -> None:
        self.wheel, self.venv, self.purelib, self.cwd = wheel, venv, purelib, cwd

    def script(self, name: str, *args: str) -> subprocess.CompletedProcess:
        return _run([str(self.venv / "bin" / name), *args], self.cwd)

    def python(self, code: str) -> subprocess.CompletedProcess:
        return _run([str(self.venv / "bin" / "python"), "-c", code], self.cwd)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    pytest.importorskip("setuptools")  # the build runs without isolation, on these
    if sys.platform == "win32":
        pytest.skip("the fresh environment's layout (bin/) is POSIX's")
    tmp = tmp_path_factory.mktemp("wheel")

    # Build from a copy, so the build's build/ and *.egg-info stay out of the checkout.
    src = tmp / "src"
    src.mkdir()
    junk = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("softlabel", "conf"):
        shutil.copytree(ROOT / name, src / name, ignore=junk)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    dist = tmp / "dist"
    pip = [sys.executable, "-m", "pip"]
    build = [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    _run([*build, "-w", str(dist), str(src)], tmp)
    (wheel,) = dist.glob("softlabel-*.whl")

    # A fresh environment holding only the wheel; the wheel goes in before the
    # dependencies are made visible, so pip sees no other softlabel.
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp)
    python = str(venv / "bin" / "python")
    _run([*pip, "--python", python, "install", "-q", "--no-deps", "--no-index", str(wheel)], tmp)
    purelib = Path(
        _run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp
        ).stdout.strip()
    )
    # The dependencies: this environment's site-packages as plain sys.path entries. Its
    # .pth files (an editable install of softlabel among them) are not processed, and the
    # fresh site-packages comes first.
    deps = [p for p in site.getsitepackages() if os.path.isdir(p)]
    (purelib / "_softlabel_test_deps.pth").write_text("".join(f"{p}\n" for p in deps))

    cwd = tmp / "elsewhere"
    cwd.mkdir()
    return Installed(wheel, venv, purelib, cwd)


@pytest.mark.slow
def test_wheel_ships_every_config(installed):
    with zipfile.ZipFile(installed.wheel) as archive:
        names = set(archive.namelist())
    expected = {
        "softlabel/conf/" + path.relative_to(ROOT / "conf").as_posix()
        for path in (ROOT / "conf").rglob("*.yaml")
    }
    assert expected and expected <= names, sorted(expected - names)
    packages = {".".join(n.split("/")[:-1]) for n in names if n.endswith("/__init__.py")}
    assert packages == set(_source_packages()) and "softlabel/py.typed" in names


@pytest.mark.slow
def test_installed_package_uses_its_packaged_configs(installed):
    shown = installed.python(
        "import softlabel, softlabel.train as t; print(softlabel.__file__); print(t.CONF_DIR)"
    )
    module, conf = shown.stdout.split()
    assert Path(module).is_relative_to(installed.purelib), module
    assert Path(conf) == installed.purelib / "softlabel" / "conf"


@pytest.mark.slow
def test_train_cfg_job_and_one_epoch(installed):
    shown = installed.script("softlabel-train", "--cfg", "job")
    assert "_target_: softlabel.data.SoftLabelDataModule" in shown.stdout
    installed.script("softlabel-train", *QUICK, "hydra.run.dir=run")
    metrics = json.loads((installed.cwd / "run" / "metrics.json").read_text())
    assert metrics["method"] == "ls" and metrics["data"] == "digits"
    assert 0.0 <= metrics["last"]["test/acc"] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "args", "expected"),
    [
        # a recipe's --config-dir, its defaults (compare/base) from the packaged configs
        (
            "softlabel-compare",
            ["--config-dir", str(ROOT / "recipes" / "compare_digits"), "--config-name", "recipe"],
            "name: compare_digits",
        ),
        ("softlabel-loop", [], "methods:"),
        ("softlabel-cache", [], "kind: dense"),
    ],
)
def test_other_scripts_help(installed, script, args, expected):
    shown = installed.script(script, *args, "--help")
    assert "== Config ==" in shown.stdout and expected in shown.stdout, shown.stdout[-2000:]
