"""Loading frozen models (teachers, previous models) from checkpoint files.

Accepted files: a Lightning checkpoint written by ``softlabel-train`` (a dict whose
``state_dict`` holds the weights under ``student.``) or a plain ``torch.save(model.state_dict())``.
Every failure names the file, the role, the config key and what did not match, before any
training starts.

Files are unpickled with torch's weights-only loader (tensors and plain containers only,
which is all that both kinds above hold). A file that needs more (a pickled model object,
custom classes) can run arbitrary code when unpickled: it is refused unless the user opts
in for that role, e.g. ``teacher.trust_checkpoint=true``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "HF_CONFIG_KEY",
    "check_output_dim",
    "extract_state_dict",
    "file_sha256",
    "load_state",
    "load_weights",
    "read_checkpoint",
]

STUDENT_PREFIX = "student."
#: the key of a ``softlabel-train`` checkpoint holding the student's Hugging Face config
#: (``config.json``'s content), from which a teacher or previous model is rebuilt
HF_CONFIG_KEY = "hf_config"
_MAX_LISTED = 5


def file_sha256(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


#: what a file written by ``torch.save`` starts with: a zip archive (the default format
#: since torch 1.6) or, in the legacy format, the pickled magic number
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)
_CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def _trust_key(key: str) -> str:
    """``teacher.checkpoint`` -> ``teacher.trust_checkpoint``."""
    prefix, _, last = key.rpartition(".")
    return f"{prefix}.trust_checkpoint" if last == "checkpoint" and prefix else "trust_checkpoint"


def _checkpoints_inside(directory: str) -> list[str]:
    found: list[str] = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        found.extend(
            os.path.join(root, name)
            for name in sorted(files)
            if name.endswith(_CHECKPOINT_SUFFIXES)
        )
        if len(found) > _MAX_LISTED:
            break
    return found


def _check_file(path: str, role: str, key: str) -> None:
    """Refuse, without unpickling anything, a path that cannot be a torch checkpoint."""
    where = f"{role} checkpoint {path!r} (from {key})"
    if os.path.isdir(path):
        inside = _checkpoints_inside(path)
        hint = f"; checkpoint files inside: {_listed(inside)}" if inside else ""
        raise IsADirectoryError(
            f"{where} is a directory, not a checkpoint file: set {key} to a .ckpt/.pt file "
            f"written by softlabel-train or torch.save{hint}"
        )
    if not os.path.exists(path):
        raise FileNotFoundError(f"{role} checkpoint not found: {path!r} (no such file; from {key})")
    if not os.path.isfile(path):
        raise ValueError(f"{where} could not be read: it is not a regular file; fix {key}")
    with open(path, "rb") as handle:
        head = handle.read(len(_LEGACY_MAGIC))
    if not head:
        raise ValueError(f"{where} could not be read: the file is empty (0 bytes); fix {key}")
    if not (head.startswith(_ZIP_MAGIC) or head == _LEGACY_MAGIC):
        raise ValueError(
            f"{where} could not be read: it is not a torch checkpoint (a file written by "
            f"torch.save starts with a zip header; this one starts with {head[:8]!r}); set {key} "
            "to a checkpoint written by softlabel-train or torch.save(model.state_dict())"
        )


def _unsafe_detail(path: str, error: Exception) -> str | None:
    """What the weights-only unpickler refused, or None when the failure is not about that."""
    try:  # zip checkpoints: list the globals without unpickling anything
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - legacy format or unreadable: fall back to the message
        names = []
    if names:
        return f"it references the Python objects {_listed(sorted(names))}"
    match = re.search(r"WeightsUnpickler error: (.*?)(?:\. Please use|\n|$)", str(error))
    if match and ("global" in match.group(1).lower() or "unsupported" in match.group(1).lower()):
        return f"the safe loader refused it ({match.group(1).strip()})"
    return None


def _read(path: str, role: str, *, trust_checkpoint: bool = False, key: str | None = None) -> Any:
    """The unpickled checkpoint; only tensors and plain containers unless ``trust_checkpoint``.

    Without ``trust_checkpoint`` nothing but torch's weights-only unpickler ever touches the
    file: a checkpoint that holds other Python objects (a pickle can run arbitrary code) is
    refused with a message naming the opt-in key.
    """
    key = key or f"{role}.checkpoint"
    where = f"{role} checkpoint {path!r} (from {key})"
    _check_file(path, role, key)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure is reported with file, role and key
        unsafe = _unsafe_detail(path, error) if isinstance(error, pickle.UnpicklingError) else None
        if unsafe is None:
            raise ValueError(
                f"{where} could not be read: the file is corrupt or truncated, or not a torch "
                f"checkpoint ({type(error).__name__}: {error}); fix {key}, e.g. point it to a "
                "checkpoint written by softlabel-train"
            ) from error
        if not trust_checkpoint:
            raise ValueError(
                f"{where} could not be read safely: it holds Python objects besides tensors and "
                f"plain containers ({unsafe}), and unpickling them can run arbitrary code; "
                f"only if you trust where the file came from, load it anyway: set "
                f"{_trust_key(key)}=true"
            ) from error
    try:  # the user vouched for this file: a full unpickle
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any failure means an unreadable file
        raise ValueError(
            f"{where} could not be read (with {_trust_key(key)}=true): "
            f"{type(error).__name__}: {error}; fix {key}"
        ) from error


def extract_state_dict(
    payload: Any, path: str = "<memory>", role: str = "teacher"
) -> dict[str, Tensor]:
    """The model weights inside a loaded checkpoint payload (``student.`` prefix removed)."""
    if isinstance(payload, nn.Module):  # torch.save(model), only readable when trusted
        return dict(payload.state_dict())
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


def read_checkpoint(
    path: str | os.PathLike[str],
    role: str = "teacher",
    *,
    trust_checkpoint: bool = False,
    key: str | None = None,
) -> Any:
    """The content of the checkpoint file ``path``, read with torch's weights-only
    unpickler: tensors and plain containers (what ``softlabel-train`` and
    ``torch.save(model.state_dict())`` write). A checkpoint holding other Python objects is
    refused unless ``trust_checkpoint=True``, since unpickling it can run arbitrary code.
    ``key`` is the config key that named the file (default ``"{role}.checkpoint"``).

    Raises FileNotFoundError for a missing file, IsADirectoryError for a directory and
    ValueError for an unreadable, corrupt or untrusted file.
    """
    path = os.fspath(path)
    if not isinstance(trust_checkpoint, bool):
        raise TypeError(
            f"trust_checkpoint must be true or false, got {trust_checkpoint!r} "
            f"(for the {role} checkpoint {path!r})"
        )
    return _read(path, role, trust_checkpoint=trust_checkpoint, key=key)


def load_state(
    model: nn.Module, payload: Any, path: str | os.PathLike[str] = "<memory>", role: str = "teacher"
) -> nn.Module:
    """Load the weights of a read checkpoint (:func:`read_checkpoint`) into ``model``,
    strictly; ValueError naming ``path``, the role and every missing or unexpected key and
    shape mismatch when they do not fit."""
    path = os.fspath(path)
    weights = extract_state_dict(payload, path, role)
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


def load_weights(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    role: str = "teacher",
    trust_checkpoint: bool = False,
    key: str | None = None,
) -> nn.Module:
    """Load the checkpoint file ``path`` into ``model`` (strictly) and return the model:
    :func:`read_checkpoint`, then :func:`load_state`."""
    payload = read_checkpoint(path, role, trust_checkpoint=trust_checkpoint, key=key)
    return load_state(model, payload, path, role)


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
