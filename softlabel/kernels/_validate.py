"""Argument checks of the fused loss: bad input raises ValueError/TypeError naming it."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from softlabel.kernels.fused import LossSpec

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_unit(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float in [0, 1], got {type(value).__name__}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _check_float_tensor(name: str, value: object, shapes: list[tuple[int, ...]], device) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(value).__name__}")
    if value.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor, got dtype {value.dtype}")
    if tuple(value.shape) not in shapes:
        allowed = " or ".join(str(s) for s in shapes)
        raise ValueError(f"{name} must have shape {allowed}, got {tuple(value.shape)}")
    if value.device != device:
        raise ValueError(f"{name} is on {value.device}, the logits are on {device}")
    return value.detach()


def _check_target(target: object, n: int, k: int, ignore_index: int, device) -> None:
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a Tensor of class indices, got {type(target).__name__}")
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise TypeError(f"target must be an integer tensor, got dtype {target.dtype}")
    if tuple(target.shape) != (n,):
        raise ValueError(f"target must have shape ({n},), got {tuple(target.shape)}")
    if target.device != device:
        raise ValueError(f"target is on {target.device}, the logits are on {device}")
    bad = ((target < 0) | (target >= k)) & (target != ignore_index)
    if bool(bad.any()):
        value = int(target[bad][0])
        raise ValueError(
            f"target holds {value}; class indices must be in [0, {k}) or equal "
            f"ignore_index={ignore_index}"
        )


def _check_divergence(spec: LossSpec) -> None:
    from softlabel.kernels.fused import DIVERGENCES

    if spec.divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {spec.divergence!r}")
    _check_unit("beta", spec.beta)
    if not isinstance(spec.standardize, bool):
        raise TypeError(f"standardize must be True or False, got {spec.standardize!r}")
    if spec.mode != "kd" and (spec.divergence != "forward_kl" or spec.standardize):
        raise ValueError(
            f"divergence={spec.divergence!r} and standardize={spec.standardize} are only used "
            f"by mode='kd', got mode={spec.mode!r}"
        )
    if spec.divergence != "jsd" and spec.beta != 0.5:
        raise ValueError(
            f"beta={spec.beta} is only used by divergence='jsd', got {spec.divergence!r}"
        )


def validate_inputs(
    spec: LossSpec, logits: object, target: object, modes: tuple[str, ...]
) -> LossSpec:
    """Check every argument against the mode; return the spec with detached tensors."""
    if spec.mode not in modes:
        raise ValueError(f"mode must be one of {modes}, got {spec.mode!r}")
    if not isinstance(logits, Tensor) or logits.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"logits must be a floating tensor, got {type(logits).__name__}")
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(
            f"logits must be 2-D (N, K) with K >= 2 (flatten other dims), got {tuple(logits.shape)}"
        )
    n, k = logits.shape
    dev = logits.device
    needs_target = not (spec.mode == "kd" and spec.alpha == 1.0)
    if spec.mode in ("dkd", "relax") and spec.soft_target is not None:
        raise ValueError(f"mode={spec.mode!r} needs class indices, not probability targets")
    if target is not None or needs_target:
        if target is None:
            raise ValueError(f"target is required for mode={spec.mode!r} unless mode='kd', alpha=1")
        _check_target(target, n, k, spec.ignore_index, dev)
    _check_unit("eps", spec.eps)
    _check_unit("alpha", spec.alpha)
    if spec.mode != "ls" and spec.eps != 0.0:
        raise ValueError(f"eps={spec.eps} is only used by mode='ls', got mode={spec.mode!r}")
    changes: dict[str, object] = {}
    if spec.prior is not None:
        if spec.mode != "ls":
            raise ValueError(f"prior is only used by mode='ls', got mode={spec.mode!r}")
        prior = _check_float_tensor("prior", spec.prior, [(k,), (k, k)], dev)
        if not bool(torch.isfinite(prior).all()) or bool((prior < 0).any()):
            raise ValueError("prior must hold finite, non-negative class probabilities")
        changes["prior"] = prior
    if spec.mode in ("kd", "dkd"):
        if spec.teacher is None:
            raise ValueError(f"teacher logits are required for mode={spec.mode!r}")
        changes["teacher"] = _check_float_tensor("teacher", spec.teacher, [(n, k)], dev)
        t = spec.temperature
        if (
            isinstance(t, bool)
            or not isinstance(t, (int, float))
            or not (t > 0 and math.isfinite(t))
        ):
            raise ValueError(f"temperature must be a finite number > 0, got {t!r}")
    elif spec.teacher is not None:
        raise ValueError(f"teacher is only used by modes 'kd' and 'dkd', got mode={spec.mode!r}")
    for name in ("tckd_weight", "nckd_weight", "ce_weight"):
        value = getattr(spec, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a float >= 0, got {type(value).__name__}")
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if spec.mode == "reloop":
        if spec.previous is None:
            raise ValueError("previous probabilities are required for mode='reloop'")
        changes["previous"] = _check_float_tensor("previous", spec.previous, [(n, k), (n,)], dev)
    elif spec.previous is not None:
        raise ValueError(f"previous is only used by mode='reloop', got mode={spec.mode!r}")
    _check_divergence(spec)
    if spec.mode in ("hard", "ls", "dkd") and spec.alpha != 0.0:
        raise ValueError(f"alpha={spec.alpha} is only used by modes 'kd', 'reloop' and 'relax'")
    rows = spec.chunk_rows
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
        raise ValueError(f"chunk_rows must be None or an int >= 1, got {rows!r}")
    if not isinstance(spec.ignore_index, int) or isinstance(spec.ignore_index, bool):
        raise TypeError(f"ignore_index must be an int, got {type(spec.ignore_index).__name__}")
    return dataclasses.replace(spec, **changes)
