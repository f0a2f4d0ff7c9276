"""The rules of the tensors with one row per position: logits, targets, class weights,
priors, previous probabilities, probability rows."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from softlabel.kernels.checks.settings import check_ignore_index
from softlabel.kernels.spec import compute_dtype

#: How far a row of class probabilities (probability targets, prior vectors, rows of a prior
#: matrix) may sum from 1: one tolerance for every such row.
PROBABILITY_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Positions:
    """Validated inputs, ready for a ``_per_position_*`` function.

    ``logits`` are in the compute dtype (float32, or float64 for float64 input) for binary
    tasks and as given for multiclass ones (the fused kernel upcasts chunk by chunk);
    ``index`` is the target as int64 with ignored positions set to 0 (None without target or
    with a probability target); ``probs`` is the probability target ``(..., K)`` or None;
    ``mask`` is True at the positions that count; ``sample_weight`` is ``weight[y_i]``
    (0 at ignored positions) or None.
    """

    logits: Tensor
    index: Tensor | None
    mask: Tensor
    binary: bool
    num_classes: int
    sample_weight: Tensor | None
    probs: Tensor | None = None

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype."""
        return compute_dtype(self.logits)

    @property
    def binary_target(self) -> Tensor:
        """The binary target as a 0/1 float tensor in the compute dtype."""
        assert self.index is not None
        return self.index.to(self.logits.dtype)


def check_logits(name: str, logits: Any) -> Tensor:
    """A floating tensor of at least one dimension (finiteness: see ``check_finite``)."""
    if not isinstance(logits, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {logits.dtype}")
    if logits.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension, got a scalar tensor")
    return logits


def _position(flat_index: int, shape: torch.Size) -> tuple[int, ...]:
    """The multi-index of ``flat_index`` in a tensor of ``shape``."""
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat_index), shape))


def check_finite(name: str, values: Tensor) -> None:
    """Raise if ``values`` holds NaN or inf, naming the first position (one pass; used where
    the tensor has one value per position, so the check is O(N))."""
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        first = int((~finite).flatten().nonzero()[0])
        value = values.flatten()[first].item()
        raise ValueError(
            f"{name} must be finite (no NaN or inf), got {value} at position "
            f"{_position(first, values.shape)}"
        )


def check_finite_rows(
    per_row: Tensor,
    rows: dict[str, Tensor | None],
    *,
    tensors: dict[str, Tensor | None] | None = None,
    largest: Callable[[int], float] | None = None,
) -> None:
    """Raise if a per-position loss is not finite, naming the input that made it so.

    ``per_row`` has the positions' shape (0 at ignored positions); ``rows`` maps argument
    names to tensors ``(..., K)`` with one row per position. When no row holds a NaN or inf,
    ``tensors`` (whole arguments such as a head's weight and bias) are checked next; else
    the loss overflowed, and the message gives the largest ``|logit|`` of that row:
    ``largest(flat position)`` when given (a linear head computes it from its hidden row),
    else the largest value of the rows. Cost: one pass over ``per_row``; the rest only on
    the error path.
    """
    finite = torch.isfinite(per_row)
    if bool(finite.all()):
        return
    first = int((~finite).flatten().nonzero()[0])
    position = _position(first, per_row.shape)
    for name, tensor in rows.items():
        if tensor is None:
            continue
        row = tensor.reshape(-1, tensor.shape[-1])[first]
        bad = ~torch.isfinite(row)
        if bool(bad.any()):
            k = int(bad.nonzero()[0])
            raise ValueError(
                f"{name} must be finite (no NaN or inf), got {row[k].item()} at position "
                f"{position + (k,)}"
            )
    for name, tensor in (tensors or {}).items():
        if tensor is not None:
            check_finite(name, tensor)
    value = largest(first) if largest is not None else _row_abs_max(rows, first)
    raise ValueError(
        f"the loss overflowed at position {position} with finite inputs: the logits are too "
        f"large for the compute dtype (largest |logit| in that row: {value})"
    )


def _row_abs_max(rows: dict[str, Tensor | None], first: int) -> float:
    return max(
        float(t.reshape(-1, t.shape[-1])[first].abs().max()) for t in rows.values() if t is not None
    )


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
    """A finite, non-negative 1-D tensor of length K (2 for binary), in ``like``'s compute
    dtype."""
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
    weight = weight.to(device=like.device, dtype=compute_dtype(like))
    if not (torch.isfinite(weight) & (weight >= 0)).all():
        raise ValueError(f"weight must be finite and >= 0, got {weight.tolist()}")
    return weight


def _decide_binary(logits: Tensor, target: Tensor | None, binary: bool | None) -> bool:
    """The task: binary when asked, or for 1-D logits (no class dimension) by default."""
    if binary is not None:
        if not isinstance(binary, bool):
            raise TypeError(f"binary must be True, False or None, got {binary!r}")
        return binary
    return logits.dim() == 1


def _check_probability_target(target: Tensor, logits_name: str, logits: Tensor) -> None:
    if not target.is_floating_point():
        raise TypeError(
            f"a target of {logits_name}'s shape {tuple(logits.shape)} must hold class "
            f"probabilities (a floating dtype), got {target.dtype}; give class indices of shape "
            f"{tuple(logits.shape[:-1])}, or pass binary=True for binary/multi-label 0/1 targets"
        )
    if logits.shape[-1] < 2:
        raise ValueError(
            f"{logits_name} must have at least 2 classes in the last dimension for a "
            f"probability target, got shape {tuple(logits.shape)}; pass binary=True for one "
            "logit per position"
        )


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

    The task is decided as the module docstring says: class indices of shape ``(...)`` or
    class probabilities of shape ``(..., K)`` for multiclass logits ``(..., K)``; binary
    (one logit per position, target of the logits' shape) with ``binary=True`` or for 1-D
    logits. Without a target (pure distillation) every position counts.
    """
    check_logits(logits_name, logits)
    check_ignore_index(ignore_index)
    is_binary = _decide_binary(logits, target, binary)
    work = logits.to(compute_dtype(logits)) if is_binary else logits
    if is_binary:
        check_finite(logits_name, logits)
    if target is None:
        if weight is not None:
            raise ValueError("weight needs a target: got weight with target=None")
        shape = logits.shape if is_binary else logits.shape[:-1]
        mask = torch.ones(shape, dtype=torch.bool, device=logits.device)
        return Positions(work, None, mask, is_binary, 2 if is_binary else logits.shape[-1], None)
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.device != logits.device:
        raise ValueError(f"target is on {target.device} but {logits_name} on {logits.device}")
    if is_binary:
        if target.shape != logits.shape:
            raise ValueError(
                f"a binary task needs a target of {logits_name}'s shape {tuple(logits.shape)} "
                f"(one 0/1 value per logit), got target {tuple(target.shape)}"
            )
        _check_binary_target(target, ignore_index)
        num_classes = 2
    elif target.shape == logits.shape:
        _check_probability_target(target, logits_name, logits)
        if weight is not None:
            raise ValueError(
                "weight (per class) is not supported with probability targets: give class "
                "indices, or fold the class weights into the target distribution"
            )
        mask = torch.ones(logits.shape[:-1], dtype=torch.bool, device=logits.device)
        probs = target.detach()
        return Positions(work, None, mask, False, logits.shape[-1], None, probs)
    else:
        if logits.dim() < 2 or logits.shape[:-1] != target.shape:
            raise ValueError(
                f"{logits_name} must have shape (..., K) with a target of class indices (...) "
                f"or class probabilities (..., K), or pass binary=True for a target of the "
                f"logits' shape; got {logits_name} {tuple(logits.shape)} and target "
                f"{tuple(target.shape)}"
            )
        num_classes = logits.shape[-1]
        _check_multiclass_target(target, num_classes, ignore_index, logits.shape)
    mask = target != ignore_index
    index = torch.where(mask, target, torch.zeros_like(target)).long()
    sample_weight = None
    if weight is not None:
        class_weight = check_weight(weight, num_classes, is_binary, logits)
        zero = torch.zeros((), dtype=class_weight.dtype, device=logits.device)
        sample_weight = torch.where(mask, class_weight[index], zero)
    return Positions(work, index, mask, is_binary, num_classes, sample_weight)


def check_prior(prior: Any, num_classes: int, like: Tensor) -> Tensor:
    """A probability vector of length K (2 for binary: P(y=0), P(y=1)), or a class-conditional
    matrix (K, K) whose row y is the smoothing distribution of class y (every row on the
    simplex), in the compute dtype of ``like`` (on its device). Cost: O(K^2) at most, once."""
    if not isinstance(prior, Tensor):
        if isinstance(prior, Sequence) and not isinstance(prior, str):
            try:
                prior = torch.tensor(prior, dtype=torch.float64)
            except (TypeError, ValueError):
                raise TypeError(
                    f"prior must be a tensor or a (nested) sequence of numbers, got {prior!r}"
                ) from None
        else:
            raise TypeError(
                f"prior must be a 1-D or 2-D tensor or sequence, got {type(prior).__name__}"
            )
    k = num_classes
    if tuple(prior.shape) not in ((k,), (k, k)):
        raise ValueError(
            f"prior must be a probability vector of length {k} (the number of classes) or a "
            f"({k}, {k}) matrix whose row y is the smoothing distribution of class y, got "
            f"shape {tuple(prior.shape)}"
        )
    prior = prior.detach()
    if prior.dim() == 1:
        check = prior.to(torch.float64)
        if not (torch.isfinite(check) & (check >= 0)).all() or abs(check.sum().item() - 1.0) > (
            PROBABILITY_TOLERANCE
        ):
            raise ValueError(
                f"prior must be non-negative and sum to 1 (within {PROBABILITY_TOLERANCE}), got "
                f"{check.tolist()}"
            )
    else:  # row minima and sums only (NaN fails the minimum, inf the sum): no K x K copies
        row_min = prior.amin(dim=1)
        # sum(dtype=float64) would copy the matrix; half precision is summed in float32
        wide = prior.float() if prior.dtype in (torch.float16, torch.bfloat16) else prior
        row_sum = wide.sum(dim=1).double()
        bad = ~((row_min >= 0) & ((row_sum - 1.0).abs() <= PROBABILITY_TOLERANCE))
        if bool(bad.any()):
            row = int(bad.nonzero()[0])
            raise ValueError(
                f"prior matrix rows must be non-negative and sum to 1 (within "
                f"{PROBABILITY_TOLERANCE}); row {row} (class {row}'s smoothing distribution) has "
                f"minimum {row_min[row].item():.6g} and sum {row_sum[row].item():.6g}"
            )
    return prior.to(device=like.device, dtype=compute_dtype(like))


def check_previous(previous: Any, positions: Positions) -> Tensor:
    """Previous probabilities: ``(..., K)`` (multiclass) or ``(...)`` = P(y=1) (binary).

    Multiclass with class indices: the loss reads only q_y, so q_y is gathered and checked
    (O(N)) and returned with the positions' shape. With probability targets every class is
    read: the (..., K) tensor is checked by row minima and maxima and returned.
    """
    if not isinstance(previous, Tensor):
        raise TypeError(f"previous must be a torch.Tensor, got {type(previous).__name__}")
    if not previous.is_floating_point():
        raise TypeError(f"previous must hold probabilities (floating dtype), got {previous.dtype}")
    expected = positions.logits.shape
    gathered = (
        not positions.binary
        and positions.index is not None
        and previous.shape == positions.mask.shape
    )
    if gathered:  # q_y, already gathered at the class indices
        previous = previous.detach()
        used = torch.where(positions.mask, previous, torch.zeros_like(previous))
        outside = ~((used >= 0) & (used <= 1))
        if bool(outside.any()):
            value = used[outside].flatten()[0].item()
            raise ValueError(f"previous must hold probabilities in [0, 1], got {value}")
        return used
    if previous.shape != expected:
        what = "P(y=1) per position" if positions.binary else "(..., K) class probabilities"
        raise ValueError(
            f"previous must have the logits' shape {tuple(expected)} ({what}), "
            f"got {tuple(previous.shape)}"
        )
    if previous.device != positions.logits.device:
        raise ValueError(
            f"previous is on {previous.device} but the logits on {positions.logits.device}"
        )
    previous = previous.detach()
    if positions.binary or positions.index is None:
        used = previous
        if not positions.binary:  # probability targets read every class: check row extremes
            used = torch.stack([previous.amin(dim=-1), previous.amax(dim=-1)])
    else:
        used = previous.gather(-1, positions.index.unsqueeze(-1)).squeeze(-1)
        used = torch.where(positions.mask, used, torch.zeros_like(used))
    outside = ~((used >= 0) & (used <= 1))
    if outside.any():
        value = used[outside].flatten()[0].item()
        raise ValueError(f"previous must hold probabilities in [0, 1], got {value}")
    if positions.binary:
        return previous.to(positions.dtype)
    return previous if positions.index is None else used


def check_probability_rows(q_min: Tensor, q_sum: Tensor) -> None:
    """Probability targets, from the row minima and sums taken while reading them: every
    row >= 0 and summing to 1 within ``PROBABILITY_TOLERANCE`` (NaN and inf fail too)."""
    ok = (q_min >= 0) & ((q_sum - 1.0).abs() <= PROBABILITY_TOLERANCE)
    if not bool(ok.all()):
        row = int((~ok).nonzero()[0])
        raise ValueError(
            "target must hold class probabilities (rows >= 0 summing to 1 within "
            f"{PROBABILITY_TOLERANCE:g}), got a row (position {row} of the flattened positions) "
            f"with minimum {q_min[row].item():.6g} and sum {q_sum[row].item():.6g}"
        )
