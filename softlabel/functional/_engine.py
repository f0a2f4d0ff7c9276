"""The one path from a loss's settings to the engine: tensors checked, engine or binary form,
reduction.

Every loss of ``softlabel.functional`` with an engine mode (and every target source, through
``spec_loss``) checks its settings where they are given, builds a ``LossSpec`` and calls
``spec_loss``: the tensors are checked once here (``softlabel.kernels.checks``), multiclass
positions are flattened to rows and computed by the engine (``fused_per_row``), binary
positions by the mode's Bernoulli form, and the per-position loss is reduced. NaN and inf
logits are found on the per-row loss (O(N)).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from softlabel.functional._reduction import _reduce
from softlabel.kernels import fused_per_row
from softlabel.kernels.checks import (
    Positions,
    check_finite_rows,
    check_previous,
    check_prior,
    check_reduction,
    check_target_needed,
    check_teacher,
    prepare,
)
from softlabel.kernels.modes import MODES
from softlabel.kernels.references import TopKLogits, check_reference
from softlabel.kernels.spec import LossSpec


def spec_loss(
    logits: Tensor,
    target: Tensor | None,
    spec: LossSpec,
    reference: Any = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    binary: bool | None = None,
    logits_name: str = "logits",
    name: str = "this loss",
) -> Tensor:
    """The loss of ``spec`` (its settings checked) on ``logits`` against ``target``, with the
    teacher reference or previous probabilities ``reference`` when the mode reads one, and
    the prior in ``spec.prior`` (unchecked). ``name`` is the loss in messages."""
    mode = MODES[spec.mode]
    check_reduction(reduction)
    if mode.needs_labels(spec):
        if target is None:
            check_target_needed(target, spec.params.get("alpha", 0.0))
    positions = prepare(
        logits,
        target,
        ignore_index=ignore_index,
        weight=weight,
        logits_name=logits_name,
        binary=binary,
    )
    spec = spec.replace(ignore_index=ignore_index)
    if positions.binary:
        per_position = _binary(positions, spec, reference, name)
    else:
        per_position = multiclass_per_position(
            logits, positions, spec, reference, logits_name, name
        )
    return _reduce(per_position, positions.mask, positions.sample_weight, reduction)


def _needs_indices(name: str, positions: Positions, target: Any) -> ValueError:
    return ValueError(
        f"{name} needs class indices of shape {tuple(positions.mask.shape)}, got class "
        f"probabilities of shape {tuple(target.shape)}"
    )


def multiclass_per_position(
    logits: Tensor,
    positions: Positions,
    spec: LossSpec,
    reference: Any,
    logits_name: str,
    name: str,
) -> Tensor:
    """The per-position loss (positions' shape) of multiclass ``logits`` through the engine,
    ``positions`` from ``prepare``; the reference and the prior checked here."""
    mode = MODES[spec.mode]
    k = logits.shape[-1]
    if positions.probs is not None and not mode.soft_target:
        raise _needs_indices(name, positions, positions.probs)
    changes: dict[str, Any] = {}
    if positions.probs is not None:
        changes["soft_target"] = positions.probs.reshape(-1, k)
    if spec.prior is not None:
        changes["prior"] = check_prior(spec.prior, k, logits)
    teacher = None
    if mode.teacher:
        teacher = check_reference(reference, logits, mode.teacher, mode.any_vocabulary)
        changes["teacher"] = (
            teacher.flatten()
            if isinstance(teacher, TopKLogits)
            else teacher.reshape(-1, teacher.shape[-1])
        )
    elif mode.previous:
        previous = check_previous(reference, positions)
        by_class = previous.shape == logits.shape
        changes["previous"] = previous.reshape(-1, k) if by_class else previous.reshape(-1)
    spec = spec.replace(**changes)
    mask = positions.mask.reshape(-1)
    mode.check(spec, mask, k)
    labels = None if positions.index is None else positions.index.reshape(-1)
    per_row = fused_per_row(logits.reshape(-1, k), labels, mask, spec)
    per_row = per_row.view(positions.mask.shape)
    dense_teacher = teacher if isinstance(teacher, Tensor) else None
    check_finite_rows(per_row.detach(), {logits_name: logits, "teacher_logits": dense_teacher})
    return per_row


def _binary(positions: Positions, spec: LossSpec, reference: Any, name: str) -> Tensor:
    mode = MODES[spec.mode]
    if not mode.has_binary:
        raise ValueError(f"{name} has no binary form (one logit per position): {mode.no_binary}")
    logits = positions.logits
    changes: dict[str, Any] = {}
    if spec.prior is not None:
        changes["prior"] = check_prior(spec.prior, 2, logits)
    if mode.teacher:
        if isinstance(reference, TopKLogits):
            raise ValueError(
                "binary=True: a top-k reference (TopKLogits) needs multiclass logits (..., V)"
            )
        reference = check_teacher(reference, logits, binary=True)
    elif mode.previous:
        changes["previous"] = check_previous(reference, positions)
    spec = spec.replace(**changes)
    mode.check(spec, positions.mask, 2)
    target = None if positions.index is None else positions.binary_target
    return mode.binary(logits, target, spec, reference)
