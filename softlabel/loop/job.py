"""Running the loop from a composed ``conf/loop.yaml`` config: seeds x methods, then the report."""

from __future__ import annotations

import copy
import inspect
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from softlabel._io import atomic_write_json
from softlabel._threads import check_threads
from softlabel.loop.runner import (
    METHODS,
    LoopSettings,
    check_reference_source,
    check_versions,
    run_method,
    train_first_version,
)
from softlabel.loop.stream import Stream

__all__ = ["model_factory", "run_job", "settings_from_config"]


def _list(value: Any, fallback: Any) -> list[Any]:
    if value is None:
        return [fallback]
    return list(value) if OmegaConf.is_list(value) or isinstance(value, (list, tuple)) else [value]


def model_factory(model_cfg: DictConfig, stream: Stream) -> Callable[[], nn.Module]:
    """A function building the configured model; ``input_shape``, ``num_classes`` and the
    stream's ``model_kwargs`` are passed when the model accepts them and the config does not set them."""
    if "_target_" not in model_cfg:
        raise ValueError(f"the model config needs a _target_, got keys {sorted(model_cfg)}")
    accepted = inspect.signature(get_object(model_cfg._target_)).parameters
    given = {
        "input_shape": list(stream.input_shape),
        "num_classes": stream.num_classes,
        **stream.model_kwargs,
    }
    extra = {k: v for k, v in given.items() if k in accepted and k not in model_cfg}

    def make() -> nn.Module:
        return instantiate(model_cfg, _convert_="all", **extra)

    return make


def settings_from_config(cfg: DictConfig) -> LoopSettings:
    """The training settings of ``cfg.train`` and the target sources of ``cfg.targets``."""
    targets = cfg.targets
    missing = [name for name in ("hard", *METHODS) if name not in targets]
    if missing:
        raise ValueError(
            f"targets must configure {missing} (each a _target_ config of a target source)"
        )
    train = cfg.train
    return LoopSettings(
        make_source=lambda name: instantiate(targets[name]),
        optimizer=instantiate(train.optimizer, _partial_=True),
        epochs=int(train.epochs),
        first_epochs=None if train.get("first_epochs") is None else int(train.first_epochs),
        batch_size=int(train.batch_size),
        eval_batch_size=int(train.eval_batch_size),
        warm_start=bool(cfg.warm_start),
        accelerator=str(train.accelerator),
        csv_logs=bool(train.get("csv_logs", True)),
        reference_from=str(cfg.get("reference_from", "model")),
    )


def run_job(cfg: DictConfig, output_dir: str | os.PathLike[str]) -> Any:
    """Train every (seed, method) run of ``cfg`` under ``output_dir`` and write the report.

    Layout: ``seed<k>/v1`` (the shared first version), ``seed<k>/<method>/`` (store,
    checkpoints, logs), and ``versions.csv``, ``summary.md``, ``versions.png``, ``loop.json``.
    """
    from softlabel.loop.report import write_report

    methods = [str(m) for m in _list(cfg.get("methods"), cfg.method)]
    seeds = [int(s) for s in _list(cfg.get("seeds"), cfg.seed)]
    bad = [m for m in methods if m not in METHODS]
    if bad or len(set(methods)) != len(methods):
        raise ValueError(f"methods must be distinct names from {METHODS}, got {methods}")
    # Checked before the stream is built (its length may follow versions) and before v1 trains.
    versions = check_versions(cfg.get("versions"))
    threads = check_threads(cfg)
    if threads is not None:
        torch.set_num_threads(threads)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = settings_from_config(cfg)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    stream = None
    for seed in seeds:
        seeded = copy.deepcopy(cfg)
        seeded.seed = seed
        stream = instantiate(seeded.loop.stream)
        check_versions(versions, len(stream.chunks))
        check_reference_source(stream, settings)
        make_model = model_factory(seeded.loop.model, stream)
        first = train_first_version(
            stream, make_model, settings, seed=seed, out_dir=out / f"seed{seed}" / "v1"
        )
        for method in methods:
            rows += run_method(
                stream,
                make_model,
                settings,
                method=method,
                versions=versions,
                seed=seed,
                out_dir=out / f"seed{seed}" / method,
                first=first,
            )
        title = f"Self-correction loop: {stream.description}"
        write_report(
            rows,
            out,
            task=stream.task,
            methods=methods,
            title=title,
            plot=bool(cfg.get("plot", True)),
        )
    info = {
        "methods": methods,
        "seeds": seeds,
        "versions": versions,
        "warm_start": bool(cfg.warm_start),
        "reference_from": settings.reference_from,
        "stream": stream.description if stream is not None else "",
        "wall_time_s": round(time.perf_counter() - start, 2),
    }
    atomic_write_json(out / "loop.json", info)
    return rows
