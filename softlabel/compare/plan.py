"""What a comparison runs: methods x seeds, pretrained models, and the exact commands.

A comparison has an output directory ``out`` laid out as::

    out/pretrained/<name>/        a model trained once (a teacher, a previous model)
    out/runs/<method>/seed<s>/    one training run per method and seed
    out/logs/<job>.log            the output of each launched command
    out/results.csv, out/summary.md, out/plots/*.png

Each method's seeds run as ONE Hydra multirun of the training app
(``python -m softlabel.train -m ... seed=0,1,2 hydra.sweep.dir=out/runs/<method>
hydra.sweep.subdir=seed${seed}``), so a ``hydra/launcher=...`` override in ``base``
sends them to that launcher; ``launch="per_run"`` starts one command per (method, seed).
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from softlabel._conf import CONF_DIR
from softlabel._config_check import unknown_key_message
from softlabel._threads import check_threads

__all__ = ["ComparePlan", "Job", "MethodSpec", "PretrainedSpec", "plan_from_config"]

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
LAUNCH_MODES = ("per_method", "per_run")
# what a target source reads -> (config key that takes the checkpoint, pretrained entry
# used by default)
_CHECKPOINT_FOR = {
    "teacher_logits": ("teacher.checkpoint", "teacher"),
    "previous_probs": ("previous.checkpoint", "previous"),
}
RESERVED_PREFIXES = ("seed=", "method=", "hydra.sweep.", "hydra.run.")
#: The keys of a method entry and of a pretrained entry given as a mapping.
METHOD_KEYS = ("overrides", "teacher", "previous")
PRETRAINED_KEYS = ("overrides", "seed", "checkpoint")
#: The named mappings of a comparison config and the keys of their entries (for the config
#: check made before softlabel-compare runs).
ENTRY_KEYS = {"methods": METHOD_KEYS, "pretrained": PRETRAINED_KEYS}
BEST_CHECKPOINT = Path("checkpoints") / "best.ckpt"
#: The checkpoint of a pretrained run that methods get: validation-selected or last epoch.
CHECKPOINT_FILES = {"best": BEST_CHECKPOINT, "last": Path("checkpoints") / "last.ckpt"}
HEADLINES = ("best", "last")


def checkpoint_key(target: str) -> tuple[str, str] | None:
    """(config key that takes the checkpoint, pretrained entry used by default) for the
    target config ``target`` of ``conf/target/``, from what its source reads
    (``TargetSource.reference``); None when it reads no model or is not a shipped config."""
    path = Path(CONF_DIR) / "target" / f"{target}.yaml"
    if not NAME_PATTERN.fullmatch(target) or not path.is_file():
        return None
    target_path = yaml.safe_load(path.read_text()).get("_target_", "")
    module, _, name = target_path.rpartition(".")
    source = getattr(importlib.import_module(module), name, None)
    return _CHECKPOINT_FOR.get(getattr(source, "reference", None))


@dataclass(frozen=True)
class PretrainedSpec:
    """A model trained once (one run, ``seed``) and reused by the methods that name it."""

    name: str
    overrides: tuple[str, ...]
    seed: int
    checkpoint: str = "best"  # "best" (validation-selected) or "last" (last epoch)


@dataclass(frozen=True)
class MethodSpec:
    """A compared method: training overrides, and which pretrained models it uses.

    ``checkpoints`` maps a config key (``teacher.checkpoint``) to a pretrained name.
    """

    name: str
    overrides: tuple[str, ...]
    checkpoints: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Job:
    """One command to launch and the run directories (by seed) it must fill.

    ``name`` is the method or pretrained name, ``log_name`` names its log file,
    ``needs`` the pretrained models it uses, ``expected`` each run's overrides.
    """

    name: str
    role: str
    argv: tuple[str, ...]
    run_dirs: Mapping[int, Path]
    needs: tuple[str, ...] = ()
    expected: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    log_name: str = ""


@dataclass(frozen=True)
class ComparePlan:
    """A validated comparison (see the module docstring for the directory layout)."""

    out: Path
    base: tuple[str, ...]
    methods: tuple[MethodSpec, ...]
    seeds: tuple[int, ...]
    pretrained: tuple[PretrainedSpec, ...] = ()
    launch: str = "per_method"
    train_command: tuple[str, ...] = (sys.executable, "-m", "softlabel.train")
    extra_overrides: tuple[str, ...] = ()  # added to method runs only (e.g. save predictions)
    env: tuple[tuple[str, str], ...] = ()  # environment variables set for the training commands
    title: str = "Comparison"
    headline: str = "best"  # the checkpoint whose table summary.md shows first

    def run_dir(self, method: str, seed: int) -> Path:
        return self.out / "runs" / method / f"seed{seed}"

    def pretrained_dir(self, name: str) -> Path:
        return self.out / "pretrained" / name

    def checkpoint_overrides(self, method: MethodSpec) -> list[str]:
        """``key=<out>/pretrained/<name>/checkpoints/<best|last>.ckpt`` for each model it uses."""
        chosen = {p.name: CHECKPOINT_FILES[p.checkpoint] for p in self.pretrained}
        return [
            f"{key}={_hydra_value(self.pretrained_dir(name) / chosen[name])}"
            for key, name in method.checkpoints
        ]

    def used_pretrained(self) -> list[PretrainedSpec]:
        """Pretrained entries some method uses (the others are not trained)."""
        used = {name for m in self.methods for _, name in m.checkpoints}
        return [p for p in self.pretrained if p.name in used]

    def method_overrides(self, method: MethodSpec, seed: int) -> tuple[str, ...]:
        """The training overrides of one run, as its ``.hydra/overrides.yaml`` lists them."""
        return (
            *self.base,
            *method.overrides,
            *self.checkpoint_overrides(method),
            *self.extra_overrides,
            f"method={method.name}",
            f"seed={seed}",
        )

    def jobs(self, seeds_to_run: Mapping[str, Sequence[int]] | None = None) -> list[Job]:
        """Pretrained jobs first, then the method jobs.

        ``seeds_to_run`` (method or pretrained name -> seeds) restricts each job to the
        seeds still to run; a name mapped to no seeds gets no job.
        """
        jobs: list[Job] = []
        for spec in self.used_pretrained():
            seeds = _restrict(seeds_to_run, spec.name, (spec.seed,))
            if not seeds:
                continue
            overrides = (*self.base, *spec.overrides, f"method={spec.name}", f"seed={spec.seed}")
            argv = (
                *self.train_command,
                "-m",
                *overrides,
                f"hydra.sweep.dir={_hydra_value(self.out / 'pretrained')}",
                f"hydra.sweep.subdir={spec.name}",
            )
            jobs.append(
                Job(
                    spec.name,
                    "pretrained",
                    argv,
                    {spec.seed: self.pretrained_dir(spec.name)},
                    expected={spec.seed: overrides},
                    log_name=spec.name,
                )
            )
        for method in self.methods:
            seeds = _restrict(seeds_to_run, method.name, self.seeds)
            needs = tuple(dict.fromkeys(name for _, name in method.checkpoints))
            groups = [seeds] if self.launch == "per_method" else [[s] for s in seeds]
            for group in groups:
                if not group:
                    continue
                common = self.method_overrides(method, group[0])[:-1]
                argv = (
                    *self.train_command,
                    "-m",
                    *common,
                    "seed=" + ",".join(str(s) for s in group),
                    f"hydra.sweep.dir={_hydra_value(self.out / 'runs' / method.name)}",
                    "hydra.sweep.subdir=seed${seed}",
                )
                log_name = (
                    method.name if self.launch == "per_method" else f"{method.name}_seed{group[0]}"
                )
                jobs.append(
                    Job(
                        method.name,
                        "method",
                        argv,
                        {s: self.run_dir(method.name, s) for s in group},
                        needs,
                        expected={s: self.method_overrides(method, s) for s in group},
                        log_name=log_name,
                    )
                )
        return jobs


def _restrict(
    seeds_to_run: Mapping[str, Sequence[int]] | None, name: str, seeds: Sequence[int]
) -> list[int]:
    if seeds_to_run is None:
        return list(seeds)
    return [s for s in seeds if s in set(seeds_to_run.get(name, ()))]


def _hydra_value(path: Path) -> str:
    """A path as a Hydra override value (quoted when it holds special characters)."""
    text = str(path)
    if re.fullmatch(r"[\w./+-]+", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _overrides(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise TypeError(f"{what} must be a list of override strings, got {value!r}")
    for item in value:
        if not isinstance(item, str) or "=" not in item:
            raise ValueError(f"{what} must hold overrides like 'key=value', got {item!r}")
        if item.lstrip("+~").startswith(RESERVED_PREFIXES):
            raise ValueError(
                f"{what} may not set {item!r}: seed, method and hydra.sweep/run are set by "
                "softlabel-compare (use `seeds`, the method's name and `out`)"
            )
    return tuple(value)


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise ValueError(
            f"{what} name {value!r} is not allowed: use letters, digits, '_', '.', '-'"
        )
    return value


def _target_choice(overrides: Sequence[str]) -> str | None:
    choice = None
    for item in overrides:
        key, _, value = item.partition("=")
        if key.lstrip("+") == "target":
            choice = value
    return choice


def _check_entry_keys(entry: Mapping[str, Any], allowed: Sequence[str], path: str) -> None:
    unknown = [key for key in entry if key not in allowed]
    if unknown:
        raise ValueError(
            "; ".join(
                unknown_key_message(f"{path}.{key}", allowed, f"under `{path}`") for key in unknown
            )
        )


def _method(
    name: str, value: Any, base: tuple[str, ...], pretrained: Mapping[str, PretrainedSpec]
) -> MethodSpec:
    if isinstance(value, Mapping):
        _check_entry_keys(value, METHOD_KEYS, f"methods.{name}")
        overrides = _overrides(value.get("overrides", []), f"methods.{name}.overrides")
        explicit = {k: value[k] for k in ("teacher", "previous") if k in value}
    else:
        overrides = _overrides(value, f"methods.{name}")
        explicit = {}
    target = _target_choice((*base, *overrides))
    checkpoints = []
    for role, key in (("teacher", "teacher.checkpoint"), ("previous", "previous.checkpoint")):
        if any(o.lstrip("+").startswith(f"{key}=") for o in (*base, *overrides)):
            continue  # the user passes this checkpoint explicitly
        if role in explicit:
            chosen = explicit[role]
            if chosen is not None and chosen not in pretrained:
                raise ValueError(
                    f"methods.{name}.{role} = {chosen!r} is not a pretrained entry; "
                    f"defined: {sorted(pretrained)}"
                )
        else:
            auto = checkpoint_key(target or "")
            chosen = auto[1] if auto and auto[0] == key and auto[1] in pretrained else None
        if chosen is not None:
            checkpoints.append((key, chosen))
    return MethodSpec(name, overrides, tuple(checkpoints))


def plan_from_config(config: Mapping[str, Any]) -> ComparePlan:
    """Validate a comparison config (a plain dict, e.g. from ``conf/compare.yaml``).

    Keys: ``out``, ``base`` and ``extra`` (overrides for every run), ``methods`` (name ->
    list of overrides, or ``{overrides, teacher, previous}``), ``seeds``, ``pretrained``
    (name -> list of overrides, or ``{overrides, seed, checkpoint}`` with checkpoint ``best``
    or ``last``), ``headline`` (``best`` or ``last``: which checkpoint's table leads
    ``summary.md``), ``launch``, ``train_command``,
    ``save_predictions`` and ``predictions_override``, ``env`` (environment variables for
    the training commands, e.g. ``OMP_NUM_THREADS``), ``threads`` (``threads=N`` added to
    every training run's overrides; null: nothing added), ``name``.

    A method whose target source reads a teacher's logits (``source.reference``) gets
    ``teacher.checkpoint`` of the pretrained entry ``teacher``, one whose source reads a
    previous model's probabilities gets ``previous.checkpoint`` of ``previous`` (when those
    entries exist and the method does not set the key itself);
    ``teacher: NAME`` / ``previous: NAME`` in a method picks another entry, ``null`` none.
    """
    if "out" not in config or not config["out"]:
        raise ValueError("out must name the comparison's output directory")
    base = _overrides(config.get("base") or [], "base")
    base = (*base, *_overrides(config.get("extra") or [], "extra"))
    threads = check_threads(config)
    if threads is not None:
        given = [o for o in base if o.lstrip("+").startswith("threads=")]
        if given:
            raise ValueError(
                f"threads={threads} and {given[-1]!r} in base/extra: set the training runs' "
                "threads once (threads=N)"
            )
        base = (*base, f"threads={threads}")
    seeds_value = config.get("seeds")
    if (
        not isinstance(seeds_value, Sequence)
        or isinstance(seeds_value, str)
        or not seeds_value
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds_value)
        or len(set(seeds_value)) != len(seeds_value)
    ):
        raise ValueError(f"seeds must be a non-empty list of distinct ints, got {seeds_value!r}")
    seeds = tuple(seeds_value)
    pretrained: dict[str, PretrainedSpec] = {}
    for name, value in (config.get("pretrained") or {}).items():
        _name(name, "pretrained")
        if isinstance(value, Mapping):
            _check_entry_keys(value, PRETRAINED_KEYS, f"pretrained.{name}")
            seed = value.get("seed", seeds[0])
            if not isinstance(seed, int) or isinstance(seed, bool):
                raise ValueError(f"pretrained.{name}.seed must be an int, got {seed!r}")
            checkpoint = value.get("checkpoint", "best")
            if checkpoint not in CHECKPOINT_FILES:
                raise ValueError(
                    f"pretrained.{name}.checkpoint must be one of {sorted(CHECKPOINT_FILES)}, "
                    f"got {checkpoint!r}"
                )
            spec = PretrainedSpec(
                name,
                _overrides(value.get("overrides", []), f"pretrained.{name}.overrides"),
                seed,
                checkpoint,
            )
        else:
            spec = PretrainedSpec(name, _overrides(value, f"pretrained.{name}"), seeds[0])
        pretrained[name] = spec
    methods_value = config.get("methods") or {}
    if not isinstance(methods_value, Mapping) or not methods_value:
        raise ValueError(f"methods must map method names to overrides, got {methods_value!r}")
    clash = set(methods_value) & set(pretrained)
    if clash:
        raise ValueError(f"names {sorted(clash)} are both a method and a pretrained entry")
    methods = tuple(
        _method(_name(n, "method"), v, base, pretrained) for n, v in methods_value.items()
    )
    launch = config.get("launch", "per_method")
    if launch not in LAUNCH_MODES:
        raise ValueError(f"launch must be one of {LAUNCH_MODES}, got {launch!r}")
    command = config.get("train_command") or (sys.executable, "-m", "softlabel.train")
    if isinstance(command, str) or not all(isinstance(c, str) for c in command):
        raise TypeError(f"train_command must be a list of strings, got {command!r}")
    per_method: tuple[str, ...] = ()
    if config.get("save_predictions", False):
        per_method = (str(config.get("predictions_override") or "++save_predictions=true"),)
    env_value = config.get("env") or {}
    if not isinstance(env_value, Mapping) or not all(isinstance(k, str) for k in env_value):
        raise TypeError(f"env must map variable names to values, got {env_value!r}")
    env = tuple((k, str(v)) for k, v in env_value.items())
    headline = config.get("headline", "best")
    if headline not in HEADLINES:
        raise ValueError(f"headline must be one of {list(HEADLINES)}, got {headline!r}")
    return ComparePlan(
        out=Path(str(config["out"])).resolve(),
        base=base,
        methods=methods,
        seeds=seeds,
        pretrained=tuple(pretrained.values()),
        launch=launch,
        train_command=tuple(command),
        extra_overrides=per_method,
        title=str(config.get("title") or config.get("name") or "Comparison"),
        env=env,
        headline=headline,
    )
