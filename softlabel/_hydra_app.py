"""The console entry point of every ``softlabel-*`` Hydra app.

:func:`hydra_app` wraps ``hydra.main``: before Hydra creates a run directory, it composes
the config the way Hydra will (the same search path, ``--config-dir``, ``--config-name``
and overrides; every job of a basic multirun that picks other group options) and refuses
unknown keys (:func:`softlabel._config_check.check_config`), a misspelt key on the command
line with the closest allowed key too, then the app's own checks. Only then does Hydra
run the app, so a refused config leaves nothing behind. ``--help``, ``--info`` and shell
completion are Hydra's alone; ``--cfg`` is checked for keys.

This replays Hydra 1.3's ``_run_hydra`` set-up (``hydra._internal``), pinned in
pyproject.toml to ``hydra-core<1.4``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from omegaconf import DictConfig

from softlabel._conf import CONF_DIR
from softlabel._config_check import UnknownKeyError, check_config, unknown_key_message

__all__ = ["hydra_app"]

_BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def hydra_app(
    task_function: Callable[[DictConfig], Any],
    *,
    config_name: str,
    schema: str | Sequence[str] | None = None,
    entries: Mapping[str, Collection[str]] | None = None,
    check: Callable[[DictConfig], None] | None = None,
) -> Callable[[], Any]:
    """The app's ``main()``: ``hydra.main(config_path=CONF_DIR, config_name=...)`` around
    ``task_function``, after the config check.

    ``schema``: the primary config(s) defining the app's top-level keys (default
    ``config_name``); ``entries``: the keys of named entries (see
    :func:`~softlabel._config_check.check_config`); ``check(cfg)``: the app's own checks
    of a composed config (with its ``hydra`` node), made before a run or multirun, not for
    ``--cfg``.
    """
    import hydra

    hydra_main = hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)(
        task_function
    )

    def main() -> Any:
        from hydra._internal.utils import run_and_report

        run_and_report(
            lambda: _check_before_running(
                task_function, config_name, schema or config_name, entries, check
            )
        )
        return hydra_main()

    main.__module__ = task_function.__module__
    main.__doc__ = f"Console entry point: conf/{config_name}.yaml checked, then the Hydra app."
    return main


def _check_before_running(
    task_function: Callable[[DictConfig], Any],
    config_name: str,
    schema: str | Sequence[str],
    entries: Mapping[str, Collection[str]] | None,
    check: Callable[[DictConfig], None] | None,
) -> None:
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import (
        create_automatic_config_search_path,
        detect_calling_file_or_module_from_task_function,
        detect_task_name,
        get_args_parser,
    )
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra

    args = get_args_parser().parse_args()
    if (
        args.help
        or args.hydra_help
        or args.info is not None
        or args.shell_completion
        or args.experimental_rerun is not None
        or (args.config_dir is not None and not os.path.isdir(args.config_dir))
    ):
        return  # Hydra answers these itself (a missing --config-dir with its own error)
    name = args.config_name or config_name
    calling_file, calling_module = detect_calling_file_or_module_from_task_function(task_function)
    search_path = create_automatic_config_search_path(
        calling_file, calling_module, args.config_path or CONF_DIR
    )
    if args.config_dir is not None:
        search_path.prepend(
            provider="command-line",
            path=f"file://{os.path.abspath(args.config_dir)}",
            anchor=SearchPathQuery(provider="schema"),
        )
    GlobalHydra.instance().clear()
    app = Hydra.create_main_hydra2(
        task_name=detect_task_name(calling_file, calling_module), config_search_path=search_path
    )
    try:
        for cfg in _job_configs(app, name, list(args.overrides), args.multirun):
            check_config(cfg, schema, entries=entries)
            if check is not None and args.cfg is None:
                _app_check(check, cfg)
    finally:
        GlobalHydra.instance().clear()


def _app_check(check: Callable[[DictConfig], None], cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import OmegaConfBaseException

    HydraConfig.instance().set_config(cfg)  # ${hydra:...} resolves as in the run
    try:
        check(cfg)
    except (ValueError, TypeError, OmegaConfBaseException) as error:
        raise ConfigCompositionException(str(error)) from error


def _job_configs(app: Any, name: str, overrides: list[str], multirun: bool) -> list[DictConfig]:
    """The config of a run, or of every job of a basic multirun with other group options
    (one job per combination of swept groups; other swept keys at their first value)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    parsed = OverridesParser.create().parse_overrides(overrides)
    sweeps = [o for o in parsed if o.is_sweep_override()]
    if not multirun and sweeps and app.get_mode(name, overrides) == RunMode.MULTIRUN:
        multirun = True  # hydra.mode=MULTIRUN in a config file
    if not multirun:
        return [_compose(app, name, overrides, RunMode.RUN)]
    base = _compose(app, name, overrides, RunMode.MULTIRUN)
    if not sweeps or base.hydra.sweeper.get("_target_") != _BASIC_SWEEPER:
        return [base]
    repository = app.config_loader.repository
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    choices = []
    try:
        for override in sweeps:
            values = [f"{override.get_key_element()}={v}" for v in override.sweep_string_iterator()]
            is_group = repository.group_exists(override.key_or_group)
            choices.append(values if is_group else values[:1])
    except Exception:  # a sweep the basic sweeper refuses: Hydra reports it
        return [base]
    return [
        _compose(app, name, [*fixed, *combo], RunMode.RUN) for combo in itertools.product(*choices)
    ]


def _compose(app: Any, name: str, overrides: list[str], mode: Any) -> DictConfig:
    """Hydra's composition; a key the command line misspells gets the closest allowed key."""
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    try:
        return app.compose_config(name, overrides, run_mode=mode)
    except ConfigCompositionException as error:
        cause = error.__cause__
        parent_node = getattr(cause, "parent_node", None)
        if (
            not isinstance(cause, (ConfigAttributeError, ConfigKeyError))
            or "not in struct" not in str(cause)
            or parent_node is None
            or not cause.full_key
        ):
            raise
        parent = str(cause.full_key).rpartition(".")[0]
        where = f"under `{parent}`" if parent else "at the top level"
        allowed = [str(k) for k in parent_node.keys() if parent or k != "hydra"]
        message = unknown_key_message(str(cause.full_key), allowed, where)
        raise UnknownKeyError(f"{error}\ncommand line: {message}") from None
