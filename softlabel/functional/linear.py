"""The public losses of a linear head's outputs, without the logits ``hidden @ weight.T + bias``.

Each ``linear_*`` function equals its ``softlabel.functional`` counterpart applied to
``F.linear(hidden, weight, bias)`` (and, for distillation from a live teacher head, to the
teacher's ``F.linear(teacher_hidden, teacher_weight, teacher_bias)``), in value and in the
gradients of ``hidden``, ``weight`` and ``bias``, but runs the engine's linear-head path
(``softlabel.kernels.engine``): rows are processed in chunks and no (N, V) tensor exists.

Shapes: ``hidden`` (..., H), ``weight`` (V, H), ``bias`` (V,) or None, one dtype and device;
``target`` holds class indices (...) or class probabilities (..., V), as for the public
losses (multiclass only). Keyword options as there: ``ignore_index``, ``reduction``
(mean | sum | none) and a per-class weight, here named ``class_weight`` since ``weight`` is
the head's; ``chunk_rows`` overrides the engine's chunk size (default:
``softlabel.kernels.default_linear_chunk_rows`` of V, H and the device).

Input checks are those of the public losses (the target is checked by the same ``prepare``)
plus the head's shapes, dtypes and devices; NaN and inf are found on the per-row loss the
chunks compute (O(N)), and the error names the input (``hidden``, ``teacher_hidden``,
``weight``, ``bias``, ...) and the position.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from softlabel.functional._reduction import _reduce
from softlabel.functional.decoupled import decoupled_distillation_spec
from softlabel.functional.distillation import distillation_spec
from softlabel.kernels.checks import (
    DEFAULT_BETA,
    DEFAULT_SKEW,
    Positions,
    check_alpha,
    check_chunk_rows,
    check_finite_rows,
    check_head,
    check_previous,
    check_prior,
    check_reduction,
    check_smoothing,
    check_target_needed,
    prepare,
)
from softlabel.kernels.engine import head_loss
from softlabel.kernels.modes import MODES
from softlabel.kernels.references import LinearHead, TopKLogits, check_reference
from softlabel.kernels.spec import LossSpec

#: How the target checks name the logits that are never built.
LOGITS_NAME = "hidden @ weight.T"


def _row_weight(positions: Positions, reduction: str, dtype: torch.dtype) -> Tensor:
    """d loss / d loss_i of ``_reduce``'s mean or sum: w_i (mask or ``weight[y_i]``), over
    sum_i w_i for mean (1 when that sum is 0)."""
    weight = positions.mask if positions.sample_weight is None else positions.sample_weight
    weight = weight.reshape(-1).to(dtype)
    if reduction == "sum":
        return weight
    total = weight.sum()
    return weight / torch.where(total > 0, total, torch.ones_like(total))


def spec_head_loss(
    hidden: Any,
    weight: Any,
    target: Any,
    bias: Any,
    spec: LossSpec,
    reference: Any = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    class_weight: Tensor | None = None,
    chunk_rows: int | None = None,
    name: str = "this loss",
) -> Tensor:
    """The loss of ``spec`` (its settings checked) on the logits ``hidden @ weight.T + bias``,
    never built; ``reference``: the teacher (a ``LinearHead``, dense logits (..., V) or a
    ``TopKLogits``) or the previous model's probabilities, as the mode reads. The one path
    of every ``linear_*`` function and ``LinearSoftTargetLoss``."""
    mode = MODES[spec.mode]
    check_reduction(reduction)
    chunk_rows = check_chunk_rows(chunk_rows)
    if mode.needs_labels(spec) and target is None:
        check_target_needed(target, spec.params.get("alpha", 0.0))
    hidden, weight, bias = check_head("", hidden, weight, bias)
    stand_in = hidden.new_zeros(()).expand(*hidden.shape[:-1], weight.shape[0])
    positions = prepare(
        stand_in,
        target,
        ignore_index=ignore_index,
        weight=class_weight,
        logits_name=LOGITS_NAME,
        binary=False,
    )
    shape = positions.mask.shape
    k = weight.shape[0]
    if positions.probs is not None and not mode.soft_target:
        raise ValueError(
            f"{name} needs class indices of shape {tuple(shape)}, got class probabilities of "
            f"shape {tuple(positions.probs.shape)}"
        )
    changes: dict[str, Any] = {"ignore_index": ignore_index, "chunk_rows": chunk_rows}
    if positions.probs is not None:
        changes["soft_target"] = positions.probs.reshape(-1, k)
    if spec.prior is not None:
        changes["prior"] = check_prior(spec.prior, k, stand_in)
    teacher = None
    if mode.teacher:
        teacher = check_reference(reference, stand_in, mode.teacher, mode.any_vocabulary)
        if isinstance(teacher, LinearHead):
            flat = teacher.hidden.reshape(-1, teacher.hidden.shape[-1])
            changes["teacher"] = LinearHead(flat, teacher.weight, teacher.bias)
        elif isinstance(teacher, TopKLogits):
            changes["teacher"] = teacher.flatten()
        else:
            changes["teacher"] = teacher.reshape(-1, teacher.shape[-1])
    elif mode.previous:
        previous = check_previous(reference, positions)
        by_class = previous.dim() > len(shape)
        changes["previous"] = previous.reshape(-1, k) if by_class else previous.reshape(-1)
    spec = spec.replace(**changes)
    mask = positions.mask.reshape(-1)
    mode.check(spec, mask, k)
    labels = None if positions.index is None else positions.index.reshape(-1)
    head = LinearHead(hidden.reshape(-1, hidden.shape[-1]), weight, bias)
    row_weight = None
    if reduction != "none":
        row_weight = _row_weight(positions, reduction, positions.dtype)
    loss, per_row = head_loss(head, labels, mask, spec, row_weight)
    _check_finite_loss(per_row.view(shape), head, teacher)
    if reduction == "none":
        return _reduce(loss.view(shape), positions.mask, positions.sample_weight, "none")
    return loss


def _check_finite_loss(per_row: Tensor, head: LinearHead, teacher: Any) -> None:
    """The one finiteness rule (``check_finite_rows``) on a linear head's per-row loss: the
    position's hidden row (student, then teacher), a dense teacher's logits, then the head
    parameters, else the logits overflowed (their largest ``|value|`` recomputed from the
    hidden rows)."""
    heads = {"": head}
    if isinstance(teacher, LinearHead):
        heads["teacher_"] = teacher
    rows: dict[str, Tensor | None] = {f"{p}hidden": part.hidden for p, part in heads.items()}
    if isinstance(teacher, Tensor):
        rows["teacher_logits"] = teacher
    tensors: dict[str, Tensor | None] = {}
    for prefix, part in heads.items():
        tensors[f"{prefix}weight"] = part.weight
        tensors[f"{prefix}bias"] = part.bias

    def largest(first: int) -> float:
        value = 0.0
        for part in heads.values():
            row = part.hidden.reshape(-1, part.hidden.shape[-1])[first : first + 1]
            logits = LinearHead(row, part.weight, part.bias).logits()
            value = max(value, float(logits.detach().abs().max()))
        return value

    check_finite_rows(per_row, rows, tensors=tensors, largest=largest)


def _options(ignore_index, reduction, class_weight, chunk_rows) -> dict[str, Any]:
    return {
        "ignore_index": ignore_index,
        "reduction": reduction,
        "class_weight": class_weight,
        "chunk_rows": chunk_rows,
    }


def linear_cross_entropy_loss(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    class_weight: Tensor | None = None,
    chunk_rows: int | None = None,
) -> Tensor:
    """``cross_entropy_loss(F.linear(hidden, weight, bias), target)`` without the logits:
    ``loss_i = lse(s_i) - s_{i, y_i}``, s_i = W h_i + b."""
    options = _options(ignore_index, reduction, class_weight, chunk_rows)
    return spec_head_loss(
        hidden, weight, target, bias, LossSpec("hard"), name="linear_cross_entropy_loss", **options
    )


def linear_label_smoothing_loss(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None = None,
    *,
    smoothing: float = 0.1,
    prior: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    class_weight: Tensor | None = None,
    chunk_rows: int | None = None,
) -> Tensor:
    """``label_smoothing_loss(F.linear(hidden, weight, bias), target, smoothing, prior)``
    without the logits: ``(1 - eps) CE(y, p) + eps H(u, p)``, u uniform or ``prior``
    (Szegedy et al., 2016)."""
    spec = LossSpec("ls", {"eps": check_smoothing(smoothing)}, prior=prior)
    options = _options(ignore_index, reduction, class_weight, chunk_rows)
    return spec_head_loss(
        hidden, weight, target, bias, spec, name="linear_label_smoothing_loss", **options
    )


def teacher_head(teacher_hidden: Any, teacher_weight: Any, teacher_bias: Any) -> LinearHead:
    """A live teacher's head, the reference of the linear-head distillation losses."""
    return LinearHead(*check_head("teacher_", teacher_hidden, teacher_weight, teacher_bias))


def _teacher(
    teacher_logits: Any, teacher_hidden: Any, teacher_weight: Any, teacher_bias: Any, name: str
) -> Any:
    """The teacher reference: exactly one of ``teacher_logits`` and the teacher's head."""
    head_given = [
        key
        for key, value in (
            ("teacher_hidden", teacher_hidden),
            ("teacher_weight", teacher_weight),
            ("teacher_bias", teacher_bias),
        )
        if value is not None
    ]
    if teacher_logits is not None:
        if head_given:
            raise ValueError(
                f"{name} takes teacher_logits or the teacher's head, not both: got "
                f"teacher_logits and {', '.join(head_given)}"
            )
        return teacher_logits
    if teacher_hidden is None or teacher_weight is None:
        raise ValueError(
            f"{name} needs the teacher: teacher_logits (dense (..., V) logits or a TopKLogits), "
            "or the teacher's head (teacher_hidden and teacher_weight, and teacher_bias if it "
            "has one)"
        )
    return teacher_head(teacher_hidden, teacher_weight, teacher_bias)


def linear_distillation_loss(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor | None,
    bias: Tensor | None = None,
    *,
    teacher_hidden: Tensor | None = None,
    teacher_weight: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    teacher_logits: Tensor | TopKLogits | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
    divergence: str = "forward_kl",
    beta: float = DEFAULT_BETA,
    skew: float = DEFAULT_SKEW,
    standardize: bool = False,
    ignore_index: int = -100,
    reduction: str = "mean",
    class_weight: Tensor | None = None,
    chunk_rows: int | None = None,
) -> Tensor:
    """``distillation_loss(s, t, target, temperature, alpha, divergence=..., beta=...,
    skew=..., standardize=...)`` with s = F.linear(hidden, weight, bias), never built:
    ``(1 - alpha) CE(s, y) + alpha T^2 D(softmax(t/T), softmax(s/T))``, D any divergence of
    ``distillation_loss``. The teacher is ``teacher_logits`` (dense (..., V) logits, or a
    top-k ``TopKLogits`` compared on its k + 1 buckets as ``topk_distillation_loss`` defines
    them) or a live head, t = F.linear(teacher_hidden, teacher_weight, teacher_bias), made
    chunk by chunk too (its hidden size may differ from the student's, its vocabulary may
    not). The teacher gets no gradient. ``target=None`` needs ``alpha=1``."""
    spec = distillation_spec(temperature, alpha, divergence, beta, skew, standardize)
    name = "linear_distillation_loss"
    reference = _teacher(teacher_logits, teacher_hidden, teacher_weight, teacher_bias, name)
    options = _options(ignore_index, reduction, class_weight, chunk_rows)
    return spec_head_loss(hidden, weight, target, bias, spec, reference, name=name, **options)


def linear_decoupled_distillation_loss(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None = None,
    *,
    teacher_hidden: Tensor | None = None,
    teacher_weight: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    teacher_logits: Tensor | None = None,
    temperature: float = 4.0,
    alpha: float = 1.0,
    beta: float = 8.0,
    ce_weight: float = 1.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    class_weight: Tensor | None = None,
    chunk_rows: int | None = None,
) -> Tensor:
    """``decoupled_distillation_loss(s, t, target, temperature, alpha, beta, ce_weight)``
    with the student's (and a live teacher head's) logits made chunk by chunk:
    ``ce_weight CE(s, y) + T^2 (alpha TCKD + beta NCKD)`` (DKD, Zhao et al., 2022). Needs
    class indices and the teacher's logits over every class (dense or a head)."""
    spec = decoupled_distillation_spec(temperature, alpha, beta, ce_weight)
    name = "linear_decoupled_distillation_loss"
    if target is None:
        raise ValueError(
            f"target is required for {name}: TCKD and NCKD split the classes at the target "
            "class, got target=None"
        )
    reference = _teacher(teacher_logits, teacher_hidden, teacher_weight, teacher_bias, name)
    options = _options(ignore_index, reduction, class_weight, chunk_rows)
    return spec_head_loss(hidden, weight, target, bias, spec, reference, name=name, **options)


def linear_self_correction_loss(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None = None,
    *,
    previous: Tensor,
    alpha: float = 0.5,
    ignore_index: int = -100,
    reduction: str = "mean",
    class_weight: Tensor | None = None,
    chunk_rows: int | None = None,
) -> Tensor:
    """``self_correction_loss(F.linear(hidden, weight, bias), target, previous, alpha)``
    without the logits: ``(1 - alpha) CE + alpha max(0, p_prev[y] - p[y])`` (ReLoop, Cai et
    al., 2022). ``previous``: the previous model's probabilities (..., V), constants."""
    alpha = check_alpha(alpha)
    if target is None:
        raise ValueError("target is required for linear_self_correction_loss, got target=None")
    spec = LossSpec("reloop", {"alpha": alpha})
    options = _options(ignore_index, reduction, class_weight, chunk_rows)
    return spec_head_loss(
        hidden, weight, target, bias, spec, previous, name="linear_self_correction_loss", **options
    )
