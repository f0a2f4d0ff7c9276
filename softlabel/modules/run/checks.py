"""The checks of a training run's settings, made before anything in the run directory
changes: thread count, run length, split sizes, monitored metrics, what a sharded run can
shard and the run directory's ``hf_model`` entry."""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig

from softlabel._threads import check_threads

__all__ = [
    "check_hf_model_entry",
    "check_monitors",
    "check_run_length",
    "check_sharding",
    "check_splits",
    "check_threads",
]

_HIGHER_IS_BETTER = {"acc", "acc_top5", "auroc"}
_LOWER_IS_BETTER = {"nll", "ece", "logloss", "loss", "loss_step", "loss_epoch"}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_run_length(cfg: DictConfig) -> None:
    """Refuse trainer settings that train nothing or never stop (Lightning's defaults:
    ``max_steps=-1``, no step limit; ``max_time=null``, no time limit)."""
    node = cfg.get("trainer") or {}
    if node.get("fast_dev_run"):
        return  # Lightning runs fast_dev_run batches whatever the limits say
    max_epochs = node.get("max_epochs")
    max_steps = node.get("max_steps", -1)
    if max_epochs is not None and (not _is_int(max_epochs) or max_epochs < -1 or max_epochs == 0):
        raise ValueError(
            f"trainer.max_epochs={max_epochs!r}"
            + (
                " trains nothing (metrics.json would describe the untrained model)"
                if max_epochs == 0
                else ""
            )
            + "; allowed: an integer >= 1, or -1 (no epoch limit) together with "
            "trainer.max_steps >= 1 or trainer.max_time"
        )
    if not _is_int(max_steps) or max_steps < -1 or max_steps == 0:
        raise ValueError(
            f"trainer.max_steps={max_steps!r}"
            + (" trains nothing" if max_steps == 0 else "")
            + "; allowed: -1 (no step limit) or an integer >= 1"
        )
    if max_epochs == -1 and max_steps == -1 and not node.get("max_time"):
        raise ValueError(
            "trainer.max_epochs=-1 with trainer.max_steps=-1 and no trainer.max_time never "
            "stops: set trainer.max_epochs to an integer >= 1, or bound the run with "
            "trainer.max_steps=N or trainer.max_time=DD:HH:MM:SS"
        )
    limit = node.get("limit_train_batches")
    if limit is not None and not isinstance(limit, bool) and limit == 0:
        raise ValueError(
            f"trainer.limit_train_batches={limit!r} trains nothing; allowed: null (every "
            "batch), a fraction in (0, 1] or an integer >= 1"
        )


def _smallest_subset(datamodule: Any, need: int) -> int | None:
    """The smallest ``data.subset`` giving every split at least ``need`` samples, for a
    source without an official test split (None otherwise or if there is none)."""
    source = getattr(datamodule, "source", None)
    fractions = (
        getattr(datamodule, "val_fraction", None),
        getattr(datamodule, "test_fraction", None),
    )
    if source is None or getattr(source, "test_index", None) is not None or None in fractions:
        return None
    val, test = float(fractions[0]), float(fractions[1])
    for n in range(1, len(source) + 1):
        n_test, n_val = round(test * n), round(val * n)
        if min(n_test, n_val, n - n_test - n_val) >= need:
            return n
    return None


def check_splits(cfg: DictConfig, datamodule: Any) -> None:
    """Refuse splits too small to hold one sample per class: training, model selection and
    the reported metrics would mean nothing (e.g. ``data.subset=5`` on 10 classes)."""
    split = getattr(datamodule, "split", None)
    if split is None:
        return
    sizes = {name: len(getattr(split, name)) for name in ("train", "val", "test")}
    need = int(getattr(datamodule, "num_labels", 2))
    if min(sizes.values()) >= need:
        return
    shown = ", ".join(f"{k}={v}" for k, v in sizes.items())
    message = (
        f"the data splits are too small: {shown} samples, but each split needs at least "
        f"{need} (one per class of this {need}-class task) for training, model selection "
        "and the reported metrics to mean anything"
    )
    subset = (cfg.get("data") or {}).get("subset")
    if subset is not None:
        smallest = _smallest_subset(datamodule, need)
        allowed = f"an integer >= {smallest}" if smallest else "a larger integer"
        total = len(datamodule.source) if hasattr(datamodule, "source") else None
        every = f"all {total} samples" if total else "all samples"
        message += f"; data.subset={subset!r} is too small: allowed: null ({every}) or {allowed}"
    else:
        message += "; use a larger dataset or other data.val_fraction / data.test_fraction"
    raise ValueError(message)


def check_monitors(cfg: DictConfig, monitor: str, module: Any) -> None:
    """Every monitored key (``monitor`` and each callback's ``monitor``) must be a metric the
    module logs, and a callback's ``mode`` must point the metric's better way."""
    allowed = module.monitor_keys()
    checks: list[tuple[str, Any, str | None, Any]] = [("monitor", monitor, None, None)]
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None or "_target_" not in node or "monitor" not in node:
            continue
        value = node.get("monitor")
        if value is None and str(node._target_).endswith("ModelCheckpoint"):
            value = monitor  # filled in by build_callbacks
        if value is None:
            continue
        label = "monitor" if value == cfg.get("monitor") else f"callbacks.{name}.monitor"
        checks.append((label, value, f"callbacks.{name}.mode", node.get("mode")))
    for label, value, mode_label, mode in checks:
        if not isinstance(value, str) or value not in allowed:
            raise ValueError(
                f"{label}={value!r} is not a metric this run logs; allowed: {', '.join(allowed)}"
            )
        metric = value.split("/", 1)[-1]
        if mode_label is None or mode not in ("min", "max"):
            continue
        if (mode == "min" and metric in _HIGHER_IS_BETTER) or (
            mode == "max" and metric in _LOWER_IS_BETTER
        ):
            better = "max" if mode == "min" else "min"
            raise ValueError(
                f"{mode_label}={mode} with {label}={value}: it would keep the "
                f"{'lowest' if mode == 'min' else 'highest'} {value}, but "
                f"{'higher' if better == 'max' else 'lower'} is better; set {mode_label}={better}"
            )


def check_hf_model_entry(output_dir: str, name: str) -> None:
    """A causal-LM run replaces ``<output_dir>/<name>`` with the trained model: refuse,
    before training, an entry there that is a symbolic link (the link's target is never
    touched) or anything but a directory."""
    path = os.path.join(output_dir, name)
    if os.path.islink(path):
        raise ValueError(
            f"{path!r} is a symbolic link (to {os.readlink(path)!r}): a causal-LM run writes "
            f"its trained model to {name}/ in the run directory and will not replace a link; "
            "remove the link or use another run directory (hydra.run.dir)"
        )
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ValueError(
            f"{path!r} exists and is not a directory: a causal-LM run writes its trained "
            f"model to {name}/ in the run directory; move that file or use another run "
            "directory (hydra.run.dir)"
        )


def check_sharding(trainer: Any, module: Any) -> None:
    """Under ``trainer=fsdp2`` (Lightning's ``ModelParallelStrategy``), refuse before any
    process starts what cannot be sharded: a module that shards nothing (only causal LMs
    do), what its ``check_shardable`` refuses, and checkpoints written as directories of
    shards."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    from softlabel.modules.sharding import FSDP2_SETTING

    if not isinstance(trainer.strategy, ModelParallelStrategy):
        return
    if getattr(trainer.strategy, "_save_distributed_checkpoint", False):
        raise ValueError(
            "trainer.strategy.save_distributed_checkpoint=true writes each checkpoint as a "
            "directory of shards, which resuming (ckpt_path), the evaluation of the best "
            "checkpoint and teacher.checkpoint do not read; set it to false (rank 0 writes "
            "one file with the whole model and optimizer state)"
        )
    check = getattr(module, "check_shardable", None)
    if not callable(check):
        student = type(getattr(module, "student", module)).__name__
        raise ValueError(
            f"{FSDP2_SETTING} shards causal language models (data=text with "
            f"student=hf_causal_lm); this run trains a {student} on "
            f"{getattr(module, 'task', 'other')} data: use trainer=ddp"
        )
    check()
