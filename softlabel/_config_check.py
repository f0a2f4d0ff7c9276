"""Unknown keys in a composed Hydra config, refused before an app runs.

Hydra's struct mode refuses a misspelt key on the command line, but a key written in a
YAML file that the defaults list merges (an experiment, a comparison recipe, a new group
option in a ``--config-dir``) is added without a word. :func:`check_config` compares the
composed config with its **reference**: the same defaults list (the same group options)
restricted to the files that define keys, namely the app's own primary config (``train``,
``cache``, ``loop``, ``compare/base``) and every group option softlabel ships. Files that
only set values (experiments, recipes, your own group options and primary configs) may set
the reference's keys and nothing else.

A key the reference lacks is still allowed when

* it sits under a node of :data:`OPEN_KEYS` (mappings whose keys are yours: a Hugging Face
  model config, environment variables, Hydra's own node);
* it is the name of an entry of a :data:`NAMED_KEYS` mapping (callbacks, the comparison's
  methods), whose own keys are checked;
* its node names a ``_target_`` that accepts it (the reference's own callable, or one you
  put there yourself): a keyword of the callable's signature, or any key when the callable
  takes ``**kwargs`` or cannot be imported (instantiating it will say so);
* it is a new group option's node (your own ``data/mine.yaml``), checked by its ``_target_``;
* the command line added it (``+key=value`` / ``++key=value``);
* an interpolation refers to it (``cache_root: ???`` used as ``${cache_root}``): a value
  the file defines for itself.

Everything else is refused, all keys at once, each with the file that set it, the closest
allowed key and the allowed keys at its level.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf

__all__ = [
    "NAMED_KEYS",
    "OPEN_KEYS",
    "UnknownKeyError",
    "check_config",
    "closest",
    "unknown_key_message",
]

#: Mappings whose contents are free (the node itself must be a key of the reference).
OPEN_KEYS: dict[str, str] = {
    "hydra": "Hydra's own settings: Hydra checks them against its own schema",
    "student.config": "a Hugging Face model config, passed to from_config",
    "teacher.model.config": "a Hugging Face model config, passed to from_config",
    "previous.model.config": "a Hugging Face model config, passed to from_config",
    "env": "softlabel-compare: environment variables of the training commands",
}

#: Mappings of named entries (the names are yours). An entry of a mapping the app gives
#: entry keys for (``check_config(..., entries=...)``: softlabel-compare's ``methods`` and
#: ``pretrained``) may hold those keys; otherwise a shipped name is checked like any node
#: and a new name needs a ``_target_``, checked by the callable's arguments.
NAMED_KEYS: dict[str, str] = {
    "callbacks": "softlabel-train: Lightning callbacks by name",
    "methods": "softlabel-compare: method name -> overrides, or {overrides, teacher, previous}",
    "pretrained": "softlabel-compare: name -> overrides, or {overrides, seed, checkpoint}",
}

#: Keys Hydra's ``instantiate`` reads itself.
_HYDRA_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_", "_args_"})
#: A node interpolation inside ``${...}``: an optional ``oc.select:``, dots for a relative
#: key, then the key (``${a.b}``, ``${.x}``, ``${a[0]}``, ``${oc.select:a,default}``).
_INTERPOLATION = re.compile(r"\$\{\s*(?:oc\.select\s*:\s*)?(\.*[\w-]+(?:\.[\w-]+)*)\s*[}\[,]")


class UnknownKeyError(ConfigCompositionException):
    """A config sets keys its app does not have (Hydra prints the message, no traceback)."""


def closest(key: str, allowed: Iterable[str]) -> str | None:
    """The allowed key most like ``key`` (``jobs`` for ``job``), or None when none is close."""
    allowed = list(allowed)
    lowered = {a.lower(): a for a in allowed}
    found = difflib.get_close_matches(key.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[found[0]] if found else None


def unknown_key_message(key: str, allowed: Iterable[str], where: str = "") -> str:
    """``unknown key `key` (did you mean `x`?); allowed keys WHERE: a, b, c``."""
    allowed = sorted(allowed)
    guess = closest(key.rpartition(".")[2], allowed)
    hint = f" (did you mean `{guess}`?)" if guess else ""
    listed = ", ".join(allowed) if allowed else "none"
    return f"unknown key `{key}`{hint}; allowed keys{' ' + where if where else ''}: {listed}"


def check_config(
    cfg: DictConfig,
    schema: str | Sequence[str],
    *,
    entries: Mapping[str, Collection[str]] | None = None,
    conf_dir: str | None = None,
) -> None:
    """Raise :class:`UnknownKeyError` when ``cfg`` sets a key its reference does not have.

    ``cfg`` is a config composed with its ``hydra`` node (``return_hydra_config=True``
    with Hydra's compose API), checked while that Hydra is initialised; ``schema`` names
    the app's primary config(s) in ``conf_dir`` (default: softlabel's config directory)
    that define its top-level keys; ``entries`` maps a :data:`NAMED_KEYS` mapping to the
    keys its entries may hold when they are mappings.
    """
    from hydra._internal.defaults_list import create_defaults_list
    from hydra.core.global_hydra import GlobalHydra

    from softlabel._conf import CONF_DIR

    schema = (schema,) if isinstance(schema, str) else tuple(schema)
    loader = GlobalHydra.instance().config_loader()
    overrides = [*cfg.hydra.overrides.hydra, *cfg.hydra.overrides.task]
    config_name = cfg.hydra.job.config_name
    # the repository with hydra.searchpath's directories, as Hydra composed cfg
    parsed, repository = loader._parse_overrides_and_create_caching_repo(config_name, overrides)
    defaults = create_defaults_list(
        repo=repository,
        config_name=config_name,
        overrides_list=parsed,
        prepend_hydra=True,
        skip_missing=False,
    ).defaults
    shipped = os.path.realpath(conf_dir or CONF_DIR)
    reference: dict[str, Any] = {}
    overlays: list[tuple[str, dict[str, Any]]] = []
    new_options: set[str] = set()
    based = False
    for entry in defaults:
        path = entry.config_path
        if path is None or path == "hydra/config" or path.startswith("hydra/"):
            continue
        loaded = repository.load_config(path)
        if loaded is None:
            continue
        content = OmegaConf.to_container(loaded.config, resolve=False)
        assert isinstance(content, dict)
        content.pop("hydra", None)
        content.pop("defaults", None)
        placed = _place(content, entry.package or "")
        source = _source_dir(loaded.path)
        from_shipped = source is not None and os.path.realpath(source) == shipped
        is_schema = from_shipped and (path in schema if not entry.package else True)
        if is_schema:
            based = based or not entry.package
            _merge(reference, placed)
        else:
            overlays.append((_file_name(loaded.path, path), placed))
            if entry.package:
                new_options.add(entry.package)
    if not based:
        raise UnknownKeyError(
            f"config {config_name!r} does not build on softlabel's {' or '.join(schema)}: "
            f"start it with `defaults: [{schema[0]}, _self_]` (then set only its keys)"
        )
    user = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(user, dict)
    added = {
        o.key_or_group
        for o in parsed
        if (o.is_add() or o.is_force_add()) and not repository.group_exists(o.key_or_group)
    }
    walk = _Walk(
        overlays=overlays,
        new_options={p for p in new_options if not _has(reference, p)},
        added=added,
        variables=set(_references(user)),
        choices=dict(cfg.hydra.runtime.choices),
        entries={k: frozenset(v) for k, v in (entries or {}).items()},
    )
    user.pop("hydra", None)
    walk.node(user, reference, "")
    if walk.problems:
        raise UnknownKeyError(
            "unknown config keys (nothing was run or written):\n"
            + "\n".join(f"  {line}" for line in walk.problems)
        )


@dataclass
class _Walk:
    """The comparison of a composed config (plain containers) with its reference."""

    overlays: list[tuple[str, dict[str, Any]]]
    new_options: set[str]
    added: set[str]
    variables: set[str]
    choices: dict[str, Any]
    entries: dict[str, frozenset[str]]
    problems: list[str] = field(default_factory=list)
    _params: dict[str, frozenset[str] | None] = field(default_factory=dict)

    def node(self, user: dict[str, Any], ref: dict[str, Any], path: str) -> None:
        target = _target(ref)
        for key, value in user.items():
            here = f"{path}.{key}" if path else str(key)
            if key in ref:
                self.child(value, ref[key], here)
                continue
            if self._exempt(here):
                continue
            if here in self.new_options or (path in NAMED_KEYS and _target(value)):
                self.user_object(value, here)
                continue
            params = self.params(target) if target else frozenset()
            if params is None or key in params or (target and key in _HYDRA_KEYS):
                continue
            self.unknown(here, set(ref) | params, path)

    def child(self, value: Any, ref: Any, path: str) -> None:
        if not isinstance(value, dict) or not isinstance(ref, dict) or path in OPEN_KEYS:
            return  # a value (a mapping where the reference has a scalar or null is one too)
        if path in self.entries:
            for name, entry in value.items():
                here = f"{path}.{name}"
                for key in entry if isinstance(entry, dict) else ():
                    if key not in self.entries[path] and not self._exempt(f"{here}.{key}"):
                        self.unknown(f"{here}.{key}", self.entries[path], here)
            return
        if _target(value) and _target(value) != _target(ref):
            self.user_object(value, path)  # your own callable: its arguments decide
        else:
            self.node(value, ref, path)

    def user_object(self, node: Any, path: str) -> None:
        """A node you defined: checked by its ``_target_``'s arguments, when it has one."""
        if not isinstance(node, dict) or not _target(node):
            return
        params = self.params(_target(node))
        if params is None:
            return
        for key, value in node.items():
            here = f"{path}.{key}"
            if key in _HYDRA_KEYS or self._exempt(here):
                continue
            if key not in params:
                self.unknown(here, params | {"_target_"}, path)
            elif _target(value):
                self.user_object(value, here)

    def params(self, target: str) -> frozenset[str] | None:
        """The keyword arguments ``target`` takes; None when any (``**kwargs``) or unknown
        (not importable here: instantiating it reports that)."""
        if target not in self._params:
            self._params[target] = _signature_keys(target)
        return self._params[target]

    def unknown(self, path: str, allowed: Iterable[str], parent: str) -> None:
        files = [name for name, placed in self.overlays if _has(placed, path)]
        source = ", ".join(dict.fromkeys(files)) if files else "command line"
        where = "at the top level"
        if parent:
            choice = next(
                (v for k, v in self.choices.items() if k == parent or k.endswith("@" + parent)),
                None,
            )
            where = f"under `{parent}`" + (f" ({parent}={choice})" if choice else "")
        self.problems.append(f"{source}: {unknown_key_message(path, allowed, where)}")

    def _exempt(self, path: str) -> bool:
        return _related(path, self.added) or _related(path, self.variables)


def _related(path: str, paths: set[str]) -> bool:
    """``path`` is one of ``paths``, lies below one, or holds one."""
    return any(p == path or p.startswith(path + ".") or path.startswith(p + ".") for p in paths)


def _target(node: Any) -> str | None:
    target = node.get("_target_") if isinstance(node, dict) else None
    return str(target) if target is not None else None


def _signature_keys(target: str) -> frozenset[str] | None:
    from hydra.utils import get_object

    try:
        parameters = inspect.signature(get_object(target)).parameters.values()
    except Exception:  # not importable (the run reports it), or no signature: not checked
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    )


def _place(content: dict[str, Any], package: str) -> dict[str, Any]:
    for part in reversed([p for p in package.split(".") if p and p != "_global_"]):
        content = {part: content}
    return content


def _merge(into: dict[str, Any], other: Mapping[str, Any]) -> None:
    for key, value in other.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value


def _has(content: Any, path: str) -> bool:
    for part in path.split("."):
        if not isinstance(content, dict) or part not in content:
            return False
        content = content[part]
    return True


def _source_dir(url: str | None) -> str | None:
    return url[len("file://") :] if url and url.startswith("file://") else None


def _file_name(url: str | None, config_path: str) -> str:
    """The file a config came from, relative to the working directory when below it."""
    directory = _source_dir(url)
    if directory is None:
        return f"{url}/{config_path}" if url else config_path
    path = os.path.join(directory, config_path + ".yaml")
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else path


def _references(content: Any, path: str = "") -> Iterable[str]:
    """The absolute keys the interpolations in ``content`` refer to."""
    if isinstance(content, dict):
        for key, value in content.items():
            yield from _references(value, f"{path}.{key}" if path else str(key))
    elif isinstance(content, list):
        for value in content:
            yield from _references(value, path)
    elif isinstance(content, str) and "${" in content:
        parent = path.split(".")[:-1] if path else []
        for match in _INTERPOLATION.finditer(content):
            key = match.group(1)
            dots = len(key) - len(key.lstrip("."))
            if dots:
                base = parent[: len(parent) - (dots - 1)] if dots > 1 else parent
                key = ".".join([*base, key.lstrip(".")])
            yield key
