"""Building the pieces of a causal-LM run (``data=text student=hf_causal_lm``).

The student and the teacher share the data's tokenizer. A model node is a
``softlabel.models.hf_causal_lm`` config; ``pretrained=DIR`` (a local Hugging Face model
directory), when set, loads that model and its ``config.json`` defines the architecture
(the node's ``config`` is then not used). A live teacher comes from ``teacher.checkpoint``
(a ``softlabel-train`` checkpoint of a student with ``teacher.model``'s config) or
``teacher.pretrained=DIR``, never both.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from softlabel.modules.build import absolute_path
from softlabel.modules.checkpoints import file_sha256, load_weights
from softlabel.modules.references import LiveTeacher, PreviousModelProvider, ReferenceProvider

__all__ = [
    "HF_MODEL_DIR",
    "build_lm_model",
    "build_lm_reference_provider",
    "directory_sha256",
    "frozen_lm",
    "save_hf_model",
]

HF_MODEL_DIR = "hf_model"
HF_CAUSAL_LM = "softlabel.models.hf_causal_lm"


def _is_set(node: Any, key: str) -> bool:
    return node is not None and not OmegaConf.is_missing(node, key) and node.get(key) is not None


def build_lm_model(
    node: DictConfig, datamodule: Any, *, pretrained: str | None = None
) -> nn.Module:
    """A causal LM from a model node, sized to the data's vocabulary and special tokens."""
    from hydra.utils import instantiate

    params = OmegaConf.to_container(node, resolve=True)
    assert isinstance(params, dict)
    if pretrained is not None or params.get("pretrained") is not None:
        path = pretrained if pretrained is not None else params["pretrained"]
        params["pretrained"] = absolute_path(path)
        params["config"] = None
    params.setdefault("num_classes", int(datamodule.vocab_size))
    for name in ("eos_token_id", "pad_token_id"):
        value = getattr(datamodule, name, None)
        if value is not None and "_target_" in params:
            params.setdefault(name, int(value))
    model = instantiate(params, _convert_="all")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model config {params.get('_target_')!r} did not build an nn.Module")
    return model


def _output_rows(model: nn.Module, datamodule: Any) -> int:
    vocab = getattr(model, "vocab_size", None)
    if vocab is not None:
        return int(vocab)
    with torch.no_grad():
        ids = torch.zeros((1, 2), dtype=torch.long)
        return int(model.eval()(ids).shape[-1])


def directory_sha256(path: str) -> str:
    """Hex SHA-256 over a directory's files (relative names and contents, sorted)."""
    import hashlib

    digest = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            digest.update(os.path.relpath(full, path).encode() + b"\0")
            digest.update(file_sha256(full).encode())
    return digest.hexdigest()


def frozen_lm(node: DictConfig, datamodule: Any, role: str) -> tuple[nn.Module, dict[str, Any]]:
    """The frozen model of ``node`` (``checkpoint`` or ``pretrained``, exactly one) and what
    to record of it: its path and the SHA-256 of its file (or directory)."""
    checkpoint_set, pretrained_set = _is_set(node, "checkpoint"), _is_set(node, "pretrained")
    if checkpoint_set == pretrained_set:
        raise ValueError(
            f"give exactly one of {role}.checkpoint=PATH (a softlabel-train checkpoint) and "
            f"{role}.pretrained=DIR (a local Hugging Face model directory); got "
            f"{role}.checkpoint={node.get('checkpoint')!r}, "
            f"{role}.pretrained={node.get('pretrained')!r}"
        )
    model_node = node.get("model")
    if pretrained_set:
        path = absolute_path(node.pretrained)
        model = build_lm_model(
            model_node or {"_target_": HF_CAUSAL_LM}, datamodule, pretrained=path
        )
        record = {f"{role}_pretrained": path, f"{role}_sha256": directory_sha256(path)}
    else:
        path = absolute_path(node.checkpoint)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{role} checkpoint not found: {path!r} (from {role}.checkpoint={node.checkpoint!r})"
            )
        if model_node is None:
            raise ValueError(f"{role}.model is not set: the architecture of {role}.checkpoint")
        model = build_lm_model(model_node, datamodule)
        load_weights(model, path, role=role, trust_checkpoint=node.get("trust_checkpoint", False))
        record = {f"{role}_checkpoint": path, f"{role}_sha256": file_sha256(path)}
    dtype = node.get("dtype")
    if dtype is not None:
        from softlabel.models.hf import DTYPES

        if dtype not in DTYPES:
            raise ValueError(f"{role}.dtype={dtype!r} is not allowed; use one of {sorted(DTYPES)}")
        model = model.to(DTYPES[dtype])
    return model, record


def build_lm_reference_provider(
    cfg: DictConfig, reference: str | None, datamodule: Any, student: nn.Module
) -> tuple[ReferenceProvider | None, dict[str, Any]]:
    """The teacher (live or cached) or previous model of a causal-LM run, with the
    vocabulary check of ``softlabel.models.hf.check_vocabularies``."""
    from softlabel.models.hf import check_vocabularies

    if reference is None:
        return None, {}
    data_vocab = int(datamodule.vocab_size)
    student_vocab = _output_rows(student, datamodule)
    if reference == "teacher_logits":
        teacher = cfg.get("teacher") or {}
        kind = teacher.get("kind", "none")
        if kind == "cached":
            from softlabel.modules.build import build_reference_provider

            provider, record = build_reference_provider(cfg, reference, datamodule)
            cached_vocab = int(getattr(provider.cache, "num_classes", student_vocab))
            check_vocabularies(student_vocab, cached_vocab, data_vocab)
            return provider, record
        if kind != "live":
            raise ValueError(
                f"teacher.kind={kind!r}: this target needs a teacher, e.g. "
                "teacher=hf_causal_lm teacher.checkpoint=PATH (or teacher.pretrained=DIR), "
                "or teacher=cached teacher.cache=DIR"
            )
        model, record = frozen_lm(teacher, datamodule, "teacher")
        check_vocabularies(student_vocab, _output_rows(model, datamodule), data_vocab)
        return LiveTeacher(model), record
    if reference == "previous_probs":
        previous = cfg.get("previous") or {}
        node = OmegaConf.create(OmegaConf.to_container(previous, resolve=True))
        if node.get("model") is None:
            node.model = cfg.student
        model, record = frozen_lm(node, datamodule, "previous")
        rows = _output_rows(model, datamodule)
        if rows != student_vocab:
            raise ValueError(
                f"vocabulary mismatch: the previous model has {rows} output rows and the "
                f"student {student_vocab}; ReLoop compares the same model's versions"
            )
        return PreviousModelProvider(model, "multiclass"), record
    raise ValueError(
        f"unknown reference kind {reference!r}; allowed: None, 'teacher_logits', 'previous_probs'"
    )


def save_hf_model(model: nn.Module, tokenizer: Any, directory: str) -> str | None:
    """Write ``model`` in Hugging Face format to ``directory`` atomically (a temporary
    sibling renamed into place); returns the directory, or None when the model has no
    ``save_pretrained``."""
    save = getattr(model, "save_pretrained", None)
    if not callable(save):
        return None
    parent = os.path.dirname(os.path.abspath(directory))
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.tmp-", dir=parent)
    try:
        save(tmp, tokenizer=tokenizer)
        if os.path.isdir(directory):
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory
