"""Building the pieces of a training run from a composed Hydra config.

Every builder checks its inputs before training starts: a missing teacher, an unreadable
checkpoint or a model of the wrong architecture or class count is reported up front.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf
from torch import nn

from softlabel.modules.checkpoints import check_output_dim, file_sha256, load_weights
from softlabel.modules.references import (
    CachedTeacher,
    LiveTeacher,
    PreviousModelProvider,
    ReferenceProvider,
)

__all__ = [
    "absolute_path",
    "build_datamodule",
    "build_loss",
    "build_model",
    "build_reference_provider",
    "output_dim",
    "scheduler_parts",
]

TEACHER_KINDS = ("none", "live", "cached")


def absolute_path(path: str) -> str:
    """``path`` made absolute against the directory the command was started from."""
    try:
        return to_absolute_path(str(path))
    except ValueError:  # Hydra not initialised (programmatic use): relative to the cwd
        return os.path.abspath(str(path))


def build_datamodule(cfg: DictConfig) -> Any:
    """Instantiate ``cfg.data`` and set it up for fitting, so its properties are known."""
    # The split is seeded by data.seed (shared by teacher and students); the train
    # order by the run's seed unless the data config sets shuffle_seed.
    extra = {}
    if cfg.data.get("shuffle_seed") is None and cfg.get("seed") is not None:
        extra["shuffle_seed"] = int(cfg.seed)
    datamodule = instantiate(cfg.data, **extra)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def output_dim(datamodule: Any) -> int:
    """Number of model outputs: 1 logit for a binary task, K otherwise."""
    return 1 if datamodule.task == "binary" else int(datamodule.num_classes)


def build_model(model_cfg: DictConfig, datamodule: Any) -> nn.Module:
    """A model from its config, given the data's input shape and output count."""
    from softlabel.models import build_model as build

    return build(model_cfg, tuple(datamodule.input_shape), output_dim(datamodule))


def build_loss(cfg: DictConfig, datamodule: Any) -> nn.Module:
    """``SoftTargetLoss(instantiate(cfg.target))``; a class prior without given values is
    estimated from the training split's class counts."""
    from softlabel import SoftTargetLoss
    from softlabel.targets import ClassPrior

    source = instantiate(cfg.target)
    if isinstance(source, ClassPrior) and not source.has_prior:
        source.set_class_counts(torch.as_tensor(datamodule.class_counts, dtype=torch.float64))
    return SoftTargetLoss(source)


def _frozen_model(
    node: DictConfig, model_cfg: Any, datamodule: Any, role: str
) -> tuple[nn.Module, str]:
    checkpoint = node.get("checkpoint")
    if checkpoint is None or OmegaConf.is_missing(node, "checkpoint"):
        raise ValueError(
            f"{role}.checkpoint is not set: give {role}.checkpoint=PATH to a trained {role}"
        )
    path = absolute_path(checkpoint)
    if not os.path.exists(path):  # a directory or bad file: load_weights says what it is
        raise FileNotFoundError(
            f"{role} checkpoint not found: {path!r} (from {role}.checkpoint={checkpoint!r})"
        )
    model = build_model(model_cfg, datamodule)
    load_weights(model, path, role=role, trust_checkpoint=node.get("trust_checkpoint", False))
    check_output_dim(model, datamodule.input_shape, output_dim(datamodule), role=role)
    return model, path


def build_reference_provider(
    cfg: DictConfig, reference: str | None, datamodule: Any
) -> tuple[ReferenceProvider | None, dict[str, Any]]:
    """The provider for the source's ``reference`` kind, and what to record about it.

    ``teacher_logits``: ``cfg.teacher`` (``kind: live`` with a model config and checkpoint,
    or ``kind: cached`` with a cache directory). ``previous_probs``: ``cfg.previous``
    (``checkpoint`` plus ``model``, null meaning the student's architecture).
    """
    if reference is None:
        return None, {}
    if reference == "teacher_logits":
        teacher = cfg.get("teacher") or {}
        kind = teacher.get("kind", "none")
        if kind not in TEACHER_KINDS:
            raise ValueError(f"teacher.kind must be one of {TEACHER_KINDS}, got {kind!r}")
        if kind == "none":
            raise ValueError(
                "this target needs a teacher, but teacher=none: pick one, e.g. "
                "teacher=mlp_large teacher.checkpoint=PATH, or teacher=cached teacher.cache=DIR"
            )
        if kind == "live":
            model, path = _frozen_model(teacher, teacher.model, datamodule, "teacher")
            return LiveTeacher(model), {
                "teacher_checkpoint": path,
                "teacher_sha256": file_sha256(path),
            }
        from softlabel.cache import open_for_datamodule

        if teacher.get("cache") is None or OmegaConf.is_missing(teacher, "cache"):
            raise ValueError(
                "teacher.cache is not set: give teacher.cache=DIR (written by softlabel-cache)"
            )
        cache_dir = absolute_path(teacher.cache)
        cache = open_for_datamodule(
            cache_dir,
            datamodule,
            allow_augmentation=bool(teacher.get("allow_augmentation", False)),
            verify=teacher.get("verify", "lazy"),
            tail=teacher.get("tail", "bucket"),
        )
        return CachedTeacher(cache), {
            "teacher_cache": cache_dir,
            "teacher_sha256": cache.teacher_sha256,
        }
    if reference == "previous_probs":
        previous = cfg.get("previous") or {}
        model_cfg = previous.get("model") or cfg.student
        model, path = _frozen_model(previous, model_cfg, datamodule, "previous")
        provider = PreviousModelProvider(model, datamodule.task)
        return provider, {"previous_checkpoint": path, "previous_sha256": file_sha256(path)}
    raise ValueError(
        f"unknown reference kind {reference!r}; allowed: None, 'teacher_logits', 'previous_probs'"
    )


def scheduler_parts(cfg: DictConfig) -> tuple[Any, str]:
    """``(factory or None, interval)`` from ``cfg.scheduler`` (``interval`` is not passed on)."""
    node = cfg.get("scheduler")
    if node is None or "_target_" not in node:
        return None, "step"
    params: Mapping[str, Any] = OmegaConf.to_container(node, resolve=True)  # type: ignore[assignment]
    params = dict(params)
    interval = params.pop("interval", "step")
    return instantiate(params, _partial_=True), interval
