"""Loading frozen models (teachers, previous models) from checkpoint files.

Accepted files: a Lightning checkpoint written by ``softlabel-train`` (a dict whose
``state_dict`` holds the weights under ``student.``) or a plain ``torch.save(model.state_dict())``.
Every failure names the file, the role and what did not match, before any training starts.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["check_output_dim", "extract_state_dict", "file_sha256", "load_weights"]

STUDENT_PREFIX = "student."
_MAX_LISTED = 5


def file_sha256(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read(path: str, role: str) -> Any:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{role} checkpoint not found: {path!r} (no such file)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as error:
        first_error = error
    try:  # Lightning checkpoints may hold plain Python objects beyond tensors
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any failure means an unreadable file
        raise ValueError(
            f"{role} checkpoint {path!r} could not be read as a torch checkpoint: "
            f"{type(error).__name__}: {error} (first attempt: {first_error})"
        ) from error


def extract_state_dict(
    payload: Any, path: str = "<memory>", role: str = "teacher"
) -> dict[str, Tensor]:
    """The model weights inside a loaded checkpoint payload (``student.`` prefix removed)."""
    if isinstance(payload, Mapping) and "state_dict" in payload:
        full = payload["state_dict"]
        if not isinstance(full, Mapping):
            raise ValueError(f"{role} checkpoint {path!r}: 'state_dict' is not a mapping")
        student = {
            k[len(STUDENT_PREFIX) :]: v for k, v in full.items() if k.startswith(STUDENT_PREFIX)
        }
        if not student:
            raise ValueError(
                f"{role} checkpoint {path!r} is a Lightning checkpoint without 'student.*' "
                f"weights (keys start with: {sorted({k.split('.')[0] for k in full})})"
            )
        return student
    if (
        isinstance(payload, Mapping)
        and payload
        and all(isinstance(v, Tensor) for v in payload.values())
    ):
        return dict(payload)
    raise ValueError(
        f"{role} checkpoint {path!r} holds neither a Lightning checkpoint (with 'state_dict') "
        f"nor a plain model state_dict (got {type(payload).__name__})"
    )


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _MAX_LISTED else "")


def load_weights(
    model: nn.Module, path: str | os.PathLike[str], *, role: str = "teacher"
) -> nn.Module:
    """Load ``path`` into ``model`` (strictly) and return the model.

    Raises FileNotFoundError for a missing file and ValueError for an unreadable file or
    weights that do not fit ``model`` (missing/unexpected keys, shape mismatches).
    """
    path = os.fspath(path)
    weights = extract_state_dict(_read(path, role), path, role)
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in weights and tuple(weights[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing keys: {_listed(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {_listed(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatches: {_listed(mismatched)}")
        raise ValueError(
            f"{role} checkpoint {path!r} does not match the configured {role} architecture "
            f"{type(model).__name__} ({'; '.join(problems)}); check the {role} config "
            f"(model type, widths, number of classes) against the run that wrote the file"
        )
    model.load_state_dict(weights, strict=True)
    return model


@torch.no_grad()
def check_output_dim(
    model: nn.Module, input_shape: Sequence[int], num_classes: int, *, role: str = "teacher"
) -> None:
    """Raise ValueError unless ``model`` maps one input of ``input_shape`` to ``num_classes`` outputs.

    Binary tasks use ``num_classes=1`` (one logit per example).
    """
    was_training = model.training
    model.eval()
    try:
        probe = next(iter(model.parameters()), torch.zeros(()))
        x = torch.zeros((2, *input_shape), dtype=probe.dtype, device=probe.device)
        out = model(x)
    except Exception as error:  # noqa: BLE001 - report any failure with the role and shape
        raise ValueError(
            f"{role} model {type(model).__name__} cannot run on inputs of shape "
            f"{tuple(input_shape)}: {type(error).__name__}: {error}"
        ) from error
    finally:
        model.train(was_training)
    per_example = out.reshape(2, -1).shape[1]
    if per_example != num_classes:
        raise ValueError(
            f"{role} outputs {per_example} classes but the data has num_classes={num_classes}; "
            f"the {role} must be trained on the same label set as the student"
        )
