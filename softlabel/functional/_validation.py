"""Input checks shared by the loss functions.

Every check raises ValueError (TypeError for a wrong type) naming the argument, the value
and what is allowed. Tensor checks use one ``.any()`` each; the offending value is only
read on the error path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import torch
from torch import Tensor

from softlabel.functional._reduction import REDUCTIONS

PRIOR_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Positions:
    """Validated inputs, ready for a ``_per_position_*`` function.

    ``logits`` are in the compute dtype (float32, or float64 for float64 input);
    ``index`` is the target as int64 with ignored positions set to 0 (None without target);
    ``mask`` is True at the positions that count; ``sample_weight`` is ``weight[y_i]``
    (0 at ignored positions) or None.
    """

    logits: Tensor
    index: Tensor | None
    mask: Tensor
    binary: bool
    num_classes: int
    sample_weight: Tensor | None

    @property
    def binary_target(self) -> Tensor:
        """The binary target as a 0/1 float tensor in the compute dtype."""
        assert self.index is not None
        return self.index.to(self.logits.dtype)


def compute_dtype(tensor: Tensor) -> torch.dtype:
    """float64 stays float64; every other floating dtype (fp16, bf16, fp32) computes in fp32."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {list(REDUCTIONS)}, got {reduction!r}")
    return reduction


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    return float(value)


def check_smoothing(smoothing: Any) -> float:
    value = _as_float("smoothing", smoothing)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing!r}")
    return value


def check_alpha(alpha: Any) -> float:
    value = _as_float("alpha", alpha)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    return value


def check_temperature(temperature: Any) -> float:
    value = _as_float("temperature", temperature)
    if not (value > 0.0 and value < float("inf")):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return value


def check_logits(name: str, logits: Any) -> Tensor:
    """A floating tensor without NaN or inf."""
    if not isinstance(logits, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {logits.dtype}")
    if logits.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension, got a scalar tensor")
    if not torch.isfinite(logits).all():
        bad = logits[~torch.isfinite(logits)].flatten()[0].item()
        raise ValueError(f"{name} must be finite (no NaN or inf), got a value {bad}")
    return logits


def _check_multiclass_target(
    target: Tensor, num_classes: int, ignore_index: int, logits_shape: torch.Size
) -> None:
    if target.dtype == torch.bool or target.is_floating_point() or target.is_complex():
        raise TypeError(
            f"target must have an integer dtype for multiclass logits {tuple(logits_shape)}, "
            f"got {target.dtype} (for binary, give logits and target the same shape)"
        )
    if num_classes < 2:
        raise ValueError(
            f"logits must have at least 2 classes in the last dimension, got shape "
            f"{tuple(logits_shape)}; for a binary task give logits the target's shape "
            "(squeeze the class dimension)"
        )
    bad = ((target < 0) | (target >= num_classes)) & (target != ignore_index)
    if bad.any():
        value = target[bad].flatten()[0].item()
        raise ValueError(
            f"target must hold class indices in [0, {num_classes}) or ignore_index="
            f"{ignore_index}, got {value}"
        )


def _check_binary_target(target: Tensor, ignore_index: int) -> None:
    if target.is_complex():
        raise TypeError(f"target must be real 0/1 values, got {target.dtype}")
    bad = (target != 0) & (target != 1) & (target != ignore_index)
    if bad.any():
        value = target[bad].flatten()[0].item()
        raise ValueError(
            f"binary target must be 0 or 1 (or ignore_index={ignore_index}), got {value}"
        )


def check_weight(weight: Any, num_classes: int, binary: bool, like: Tensor) -> Tensor:
    """A finite, non-negative 1-D tensor of length K (2 for binary), in ``like``'s dtype."""
    if not isinstance(weight, Tensor):
        if isinstance(weight, Sequence) and not isinstance(weight, str):
            weight = torch.tensor([float(w) for w in weight])
        else:
            raise TypeError(f"weight must be a 1-D tensor or None, got {type(weight).__name__}")
    expected = "2 (weight[0] for y=0, weight[1] for y=1)" if binary else str(num_classes)
    if weight.dim() != 1 or weight.shape[0] != num_classes:
        raise ValueError(
            f"weight must be a 1-D tensor of length {expected}, got shape {tuple(weight.shape)}"
        )
    weight = weight.to(device=like.device, dtype=like.dtype)
    if not (torch.isfinite(weight) & (weight >= 0)).all():
        raise ValueError(f"weight must be finite and >= 0, got {weight.tolist()}")
    return weight


def prepare(
    logits: Tensor,
    target: Tensor | None,
    *,
    ignore_index: int,
    weight: Tensor | None,
    logits_name: str = "logits",
    binary: bool | None = None,
) -> Positions:
    """Validate logits/target/weight and derive the task, mask, safe index and sample weights.

    Binary when logits and target have the same shape (one logit per position), otherwise
    multiclass with the classes in the last dimension. Without a target (pure distillation)
    every position counts and ``binary`` decides (default: multiclass unless logits are 1-D).
    """
    check_logits(logits_name, logits)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
    work = logits.to(compute_dtype(logits))
    if target is None:
        if weight is not None:
            raise ValueError("weight needs a target: got weight with target=None")
        is_binary = logits.dim() == 1 if binary is None else bool(binary)
        shape = logits.shape if is_binary else logits.shape[:-1]
        mask = torch.ones(shape, dtype=torch.bool, device=logits.device)
        return Positions(work, None, mask, is_binary, 2 if is_binary else logits.shape[-1], None)
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.device != logits.device:
        raise ValueError(f"target is on {target.device} but {logits_name} on {logits.device}")
    is_binary = target.shape == logits.shape
    if binary is not None and bool(binary) != is_binary:
        raise ValueError(
            f"binary={binary} does not match the shapes: {logits_name} {tuple(logits.shape)}, "
            f"target {tuple(target.shape)}"
        )
    if is_binary:
        _check_binary_target(target, ignore_index)
        num_classes = 2
    else:
        if logits.shape[:-1] != target.shape:
            raise ValueError(
                f"{logits_name} must have shape (..., K) with target (...) (multiclass) or the "
                f"target's shape (binary), got {logits_name} {tuple(logits.shape)} and target "
                f"{tuple(target.shape)}"
            )
        num_classes = logits.shape[-1]
        _check_multiclass_target(target, num_classes, ignore_index, logits.shape)
    mask = target != ignore_index
    index = torch.where(mask, target, torch.zeros_like(target)).long()
    sample_weight = None
    if weight is not None:
        class_weight = check_weight(weight, num_classes, is_binary, work)
        sample_weight = torch.where(mask, class_weight[index], torch.zeros((), dtype=work.dtype))
    return Positions(work, index, mask, is_binary, num_classes, sample_weight)


def check_prior(prior: Any, num_classes: int, like: Tensor) -> Tensor:
    """A probability vector of length K (2 for binary: P(y=0), P(y=1)) in ``like``'s dtype."""
    if not isinstance(prior, Tensor):
        if isinstance(prior, Sequence) and not isinstance(prior, str):
            prior = torch.tensor([float(p) for p in prior], dtype=torch.float64)
        else:
            raise TypeError(f"prior must be a 1-D tensor or sequence, got {type(prior).__name__}")
    if prior.dim() != 1 or prior.shape[0] != num_classes:
        raise ValueError(
            f"prior must be a probability vector of length {num_classes} (the number of "
            f"classes), got shape {tuple(prior.shape)}"
        )
    check = prior.detach().to(torch.float64)
    if not (torch.isfinite(check) & (check >= 0)).all() or abs(check.sum().item() - 1.0) > (
        PRIOR_TOLERANCE
    ):
        raise ValueError(
            f"prior must be non-negative and sum to 1 (within {PRIOR_TOLERANCE}), got "
            f"{check.tolist()}"
        )
    return prior.detach().to(device=like.device, dtype=like.dtype)


def check_teacher(teacher_logits: Any, student_logits: Tensor) -> Tensor:
    check_logits("teacher_logits", teacher_logits)
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            "teacher_logits must have the student's shape "
            f"{tuple(student_logits.shape)}, got {tuple(teacher_logits.shape)}"
        )
    return teacher_logits.detach().to(compute_dtype(student_logits))


def check_previous(previous: Any, positions: Positions) -> Tensor:
    """Previous probabilities: ``(..., K)`` (multiclass) or ``(...)`` = P(y=1) (binary)."""
    if not isinstance(previous, Tensor):
        raise TypeError(f"previous must be a torch.Tensor, got {type(previous).__name__}")
    if not previous.is_floating_point():
        raise TypeError(f"previous must hold probabilities (floating dtype), got {previous.dtype}")
    expected = positions.logits.shape
    if previous.shape != expected:
        what = "P(y=1) per position" if positions.binary else "(..., K) class probabilities"
        raise ValueError(
            f"previous must have the logits' shape {tuple(expected)} ({what}), "
            f"got {tuple(previous.shape)}"
        )
    outside = ~((previous >= 0) & (previous <= 1))
    if outside.any():
        value = previous[outside].flatten()[0].item()
        raise ValueError(f"previous must hold probabilities in [0, 1], got {value}")
    return previous.detach().to(positions.logits.dtype)
