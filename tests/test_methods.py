"""A method is one unit: each target source has a config, a docs entry and an engine mode (or a
declared fallback), and the docs' table of methods says what the code does.

Adding a source without any of these fails here; see docs/architecture.md, "Adding a method".
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import yaml

import softlabel.targets as targets
from softlabel.kernels.modes import MODES
from softlabel.targets import TargetSource

ROOT = Path(__file__).resolve().parents[1]
LOSSES_DOC = (ROOT / "docs" / "losses.md").read_text()

SOURCES = [
    getattr(targets, name)
    for name in targets.__all__
    if inspect.isclass(getattr(targets, name))
    and issubclass(getattr(targets, name), TargetSource)
    and getattr(targets, name) is not TargetSource
]


def _target_configs() -> dict[str, dict]:
    configs = {}
    for path in sorted((ROOT / "conf" / "target").glob("*.yaml")):
        configs[path.stem] = yaml.safe_load(path.read_text())
    return configs


CONFIGS = _target_configs()


def _class_of(config: dict) -> type:
    module, _, name = config["_target_"].rpartition(".")
    assert module == "softlabel.targets", config["_target_"]
    return getattr(targets, name)


def test_every_source_is_exported_and_found():
    assert len(SOURCES) >= 12


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.__name__)
def test_a_source_has_a_config(source):
    assert any(_class_of(config) is source for config in CONFIGS.values()), (
        f"{source.__name__} has no conf/target/*.yaml with _target_: "
        f"softlabel.targets.{source.__name__}"
    )


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.__name__)
def test_a_source_has_an_engine_mode_or_a_declared_fallback(source):
    if source.mode is None:
        assert source.fallback, f"{source.__name__} has neither a mode nor a fallback reason"
    else:
        assert source.mode in MODES
        assert source.fallback is None


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.__name__)
def test_a_source_has_a_docs_section(source):
    headings = [line for line in LOSSES_DOC.splitlines() if line.startswith("#")]
    assert any(f"`{source.__name__}`" in line for line in headings), (
        f"docs/losses.md has no heading naming `{source.__name__}`"
    )


def test_every_mode_is_used_by_a_source():
    assert {source.mode for source in SOURCES} - {None} == set(MODES)


def _methods_table() -> dict[str, list[str]]:
    """The rows of docs/losses.md's table of methods, by config name."""
    start = LOSSES_DOC.index("<!-- methods table -->")
    rows = {}
    for line in LOSSES_DOC[start:].splitlines()[1:]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        match = re.fullmatch(r"`(\w+)`", cells[0])
        if match:
            rows[match.group(1)] = cells[1:]
    return rows


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_docs_table_says_what_each_config_does(name):
    """Columns: source, mode, linear head, top-k teacher, binary."""
    from hydra.utils import instantiate

    rows = _methods_table()
    assert name in rows, f"docs/losses.md's methods table has no row for target={name}"
    config = {key: value for key, value in CONFIGS[name].items() if value is not None}
    source = instantiate(config)
    expected = [
        f"`{type(source).__name__}`",
        f"`{source.mode}`" if source.mode else "fallback",
        _yes(source.linear_head),
        _yes(source.accepts("topk")),
        _yes(source.binary),
    ]
    assert rows[name][:5] == expected


def test_the_table_has_no_row_without_a_config():
    assert set(_methods_table()) == set(CONFIGS)
