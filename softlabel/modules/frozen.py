"""Frozen models (teachers, previous models) for every data kind.

A frozen model comes from ``checkpoint=PATH`` (a ``softlabel-train`` checkpoint or a
``torch.save(model.state_dict())`` file, read with torch's weights-only loader) or, for a
causal LM, ``pretrained=DIR`` (a local Hugging Face directory or a ``.gguf`` file), never
both. Its
architecture is the ``model`` config; a causal LM's may instead come from the checkpoint:
``softlabel-train`` saves the student's Hugging Face config in every checkpoint (older
checkpoints: the run's ``.hydra/config.yaml`` beside ``checkpoints/``), and an explicit
``model.config`` that contradicts it is refused. ``dtype`` casts the frozen weights
(e.g. bfloat16 to halve a teacher's memory).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from softlabel.modules.build import (
    absolute_path,
    build_model,
    is_causal_lm,
    model_label,
    output_dim,
)
from softlabel.modules.checkpoints import (
    HF_CONFIG_KEY,
    check_output_dim,
    file_sha256,
    load_state,
    read_checkpoint,
)
from softlabel.modules.rundir import CHECKPOINT_DIR

__all__ = ["HF_CAUSAL_LM", "directory_sha256", "frozen_model", "output_rows", "saved_architecture"]

HF_CAUSAL_LM = "softlabel.models.hf_causal_lm"
#: the run's config, as Hydra writes it in a run directory
_HYDRA_CONFIG = os.path.join(".hydra", "config.yaml")


def directory_sha256(path: str) -> str:
    """Hex SHA-256 over a directory's files (relative names and contents, sorted), or of
    the file itself when ``path`` is one (a ``.gguf`` model)."""
    import hashlib

    if os.path.isfile(path):
        return file_sha256(path)

    digest = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            digest.update(os.path.relpath(full, path).encode() + b"\0")
            digest.update(file_sha256(full).encode())
    return digest.hexdigest()


def output_rows(model: nn.Module) -> int:
    """The rows of a causal LM's output layer (its ``vocab_size``, else measured on two
    tokens)."""
    vocab = getattr(model, "vocab_size", None)
    if vocab is not None:
        return int(vocab)
    with torch.no_grad():
        ids = torch.zeros((1, 2), dtype=torch.long)
        return int(model.eval()(ids).shape[-1])


def _from_run_config(path: str) -> dict[str, Any] | None:
    """The student config of the run that wrote the checkpoint ``path``: its ``config``,
    or the ``config.json`` of its ``pretrained`` directory; None when there is none."""
    checkpoint = Path(path)
    if checkpoint.parent.name != CHECKPOINT_DIR:
        return None
    run_config = checkpoint.parent.parent / _HYDRA_CONFIG
    if not run_config.is_file():
        return None
    try:
        student = OmegaConf.to_container(OmegaConf.load(run_config).student, resolve=True)
    except Exception:  # noqa: BLE001 - an unreadable run config holds no usable architecture
        return None
    if not isinstance(student, Mapping):
        return None
    if isinstance(student.get("config"), Mapping):
        return dict(student["config"])
    pretrained = student.get("pretrained")
    config_json = Path(str(pretrained), "config.json") if pretrained else None
    if config_json is not None and config_json.is_file():
        return dict(json.loads(config_json.read_text()))
    return None


def saved_architecture(payload: Any, path: str) -> tuple[dict[str, Any] | None, str]:
    """``(config, where)``: the Hugging Face config saved in the checkpoint ``payload``
    (``where="checkpoint"``, complete), else the one of the run directory's
    ``.hydra/config.yaml`` (``where`` is that file; only the keys the run set), else
    ``(None, "")``."""
    if isinstance(payload, Mapping) and isinstance(payload.get(HF_CONFIG_KEY), Mapping):
        return dict(payload[HF_CONFIG_KEY]), "checkpoint"
    config = _from_run_config(path)
    if config is not None:
        return config, str(Path(path).parent.parent / _HYDRA_CONFIG)
    return None, ""


def _lm_architecture(
    model: Mapping[str, Any] | None,
    fallback: Mapping[str, Any] | None,
    payload: Any,
    path: str,
    role: str,
) -> dict[str, Any]:
    """The model config to build a causal LM ``checkpoint`` into: the saved architecture,
    unless ``model`` sets a ``pretrained`` directory; an explicit ``model.config`` must
    agree with it. ``fallback`` (the student's config, for a previous model without
    ``model``) is used when nothing is saved."""
    node = dict(model or {"_target_": HF_CAUSAL_LM})
    if node.get("pretrained") is not None:
        return node
    saved, where = saved_architecture(payload, path)
    given = node.get("config")
    if saved is None:
        if given is not None:
            return node
        if model is None and fallback is not None:
            return dict(fallback)
        raise ValueError(
            f"{role}.model.config is not set and {role}.checkpoint={path!r} records no "
            "architecture (a checkpoint written before softlabel saved it, away from its run "
            f"directory): set {role}.model.config to the student.config of the run that "
            "wrote it"
        )
    if given is not None:
        complete = where == "checkpoint"
        differ = sorted(
            str(k)
            for k, v in given.items()
            if (k in saved and saved[k] != v) or (complete and k not in saved)
        )
        if differ:
            shown = {k: saved.get(k, "(not set)") for k in given}
            raise ValueError(
                f"{role}.model.config contradicts the architecture saved with "
                f"{role}.checkpoint={path!r} (from the {where}) in {', '.join(differ)}: "
                f"{role}.model.config={dict(given)}, saved: {shown}; leave "
                f"{role}.model.config unset (null) to use the saved architecture"
            )
    node["config"] = {**saved, **(given or {})}
    return node


def frozen_model(
    role: str,
    datamodule: Any,
    *,
    model: Mapping[str, Any] | None = None,
    checkpoint: str | None = None,
    pretrained: str | None = None,
    dtype: str | None = None,
    trust_checkpoint: bool = False,
    fallback_model: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The frozen model of the config node ``role`` (``teacher`` or ``previous``) and what
    to record of it: its path and the SHA-256 of its file (or directory).

    ``model`` is the architecture (``fallback_model`` when it is None: the student's, for a
    previous model); ``checkpoint`` or, for a causal LM, ``pretrained`` gives the weights.
    A classifier must give one output per class of the data; a causal LM must cover the
    data's block size.
    """
    from softlabel.models.hf import DTYPES

    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"{role}.dtype={dtype!r} is not allowed; use one of {sorted(DTYPES)}")
    lm = is_causal_lm(datamodule)
    if not lm and pretrained is not None:
        raise ValueError(
            f"{role}.pretrained={pretrained!r}: a Hugging Face directory is for causal LMs "
            f"(data=text); give {role}.checkpoint=PATH"
        )
    has_checkpoint, has_pretrained = checkpoint is not None, pretrained is not None
    if lm and has_checkpoint == has_pretrained:
        raise ValueError(
            f"give exactly one of {role}.checkpoint=PATH (a softlabel-train checkpoint) and "
            f"{role}.pretrained=DIR (a local Hugging Face model directory); got "
            f"{role}.checkpoint={checkpoint!r}, {role}.pretrained={pretrained!r}"
        )
    if not has_checkpoint and not has_pretrained:
        raise ValueError(
            f"{role}.checkpoint is not set: give {role}.checkpoint=PATH to a trained "
            f"{model_label(role)}"
        )
    if has_pretrained:
        path = absolute_path(str(pretrained))
        node = model or fallback_model or {"_target_": HF_CAUSAL_LM}
        frozen = build_model(node, datamodule, pretrained=path, role=role)
        record = {f"{role}_pretrained": path, f"{role}_sha256": directory_sha256(path)}
    else:
        path = absolute_path(str(checkpoint))
        if not os.path.exists(path):  # a directory or bad file: read_checkpoint says what
            raise FileNotFoundError(
                f"{role} checkpoint not found: {path!r} (from {role}.checkpoint={checkpoint!r})"
            )
        payload = read_checkpoint(path, role, trust_checkpoint=trust_checkpoint)
        if lm:
            node = _lm_architecture(model, fallback_model, payload, path, role)
        else:
            node = model or fallback_model
            if node is None:
                raise ValueError(f"{role}.model is not set: the architecture of {role}.checkpoint")
        frozen = build_model(node, datamodule, role=role)
        load_state(frozen, payload, path, role)
        record = {f"{role}_checkpoint": path, f"{role}_sha256": file_sha256(path)}
    if dtype is not None:
        frozen = frozen.to(DTYPES[dtype])
    if not lm:  # a causal LM's vocabulary and context are checked when it is built
        check_output_dim(frozen, datamodule.input_shape, output_dim(datamodule), role=role)
    return frozen, record
