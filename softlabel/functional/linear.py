"""The public losses of a linear head's outputs, without the logits ``hidden @ weight.T + bias``.

Each ``linear_*`` function equals its ``softlabel.functional`` counterpart applied to
``F.linear(hidden, weight, bias)`` (and, for distillation, to the teacher's
``F.linear(teacher_hidden, teacher_weight, teacher_bias)``), in value and in the gradients of
``hidden``, ``weight`` and ``bias``, but runs the fused linear-head kernel
(``softlabel.kernels.linear``): rows are processed in chunks and no (N, V) tensor exists.

Shapes: ``hidden`` (..., H), ``weight`` (V, H), ``bias`` (V,) or None, one dtype and device;
``target`` holds class indices (...) or class probabilities (..., V), as for the public
losses (multiclass only). Keyword options as there: ``ignore_index``, ``reduction``
(mean | sum | none) and a per-class weight, here named ``class_weight`` since ``weight`` is
the head's; ``chunk_rows`` overrides the kernel's chunk size (default:
``softlabel.kernels.linear.default_linear_chunk_rows`` of V, H and the device).

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
from softlabel.functional._validation import (
    Positions,
    check_alpha,
    check_beta,
    check_divergence,
    check_finite,
    check_flag,
    check_loss_weight,
    check_previous,
    check_prior,
    check_reduction,
    check_smoothing,
    check_temperature,
    prepare,
)
from softlabel.kernels import LossSpec
from softlabel.kernels.linear import LinearHead, fused_linear_loss

#: How the target checks name the logits that are never built.
LOGITS_NAME = "hidden @ weight.T"


def _check_tensor(name: str, value: Any) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {value.dtype}")
    return value


def _check_head(
    prefix: str, hidden: Any, weight: Any, bias: Any, positions_shape: torch.Size | None = None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``{prefix}hidden`` (..., H), ``{prefix}weight`` (V, H) with V >= 2, ``{prefix}bias``
    (V,) or None: one dtype and device; ``positions_shape`` (the student's ...) when given."""
    names = {part: f"{prefix}{part}" for part in ("hidden", "weight", "bias")}
    hidden = _check_tensor(names["hidden"], hidden)
    weight = _check_tensor(names["weight"], weight)
    if hidden.dim() < 2:
        raise ValueError(
            f"{names['hidden']} must have shape (..., H) with at least one position dimension, "
            f"got {tuple(hidden.shape)}"
        )
    if positions_shape is not None and hidden.shape[:-1] != positions_shape:
        raise ValueError(
            f"{names['hidden']} must have the student's positions {tuple(positions_shape)} "
            f"before its feature dimension, got {tuple(hidden.shape)}"
        )
    size = hidden.shape[-1]
    if weight.dim() != 2 or weight.shape[1] != size or weight.shape[0] < 2:
        raise ValueError(
            f"{names['weight']} must have shape (V, H) with V >= 2 classes and H = "
            f"{names['hidden']}.shape[-1] = {size}, got {tuple(weight.shape)}"
        )
    tensors = {"weight": weight}
    if bias is not None:
        bias = _check_tensor(names["bias"], bias)
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(
                f"{names['bias']} must have shape ({weight.shape[0]},) (one value per row of "
                f"{names['weight']}), got {tuple(bias.shape)}"
            )
        tensors["bias"] = bias
    for part, tensor in tensors.items():
        if tensor.dtype != hidden.dtype:
            raise TypeError(
                f"{names[part]} has dtype {tensor.dtype}, {names['hidden']} {hidden.dtype}: "
                "give the head the features' dtype"
            )
        if tensor.device != hidden.device:
            raise ValueError(
                f"{names[part]} is on {tensor.device} but {names['hidden']} on {hidden.device}"
            )
    return hidden, weight, bias


def _check_chunk_rows(chunk_rows: Any) -> int | None:
    if chunk_rows is not None and (
        isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1
    ):
        raise ValueError(f"chunk_rows must be None or an int >= 1, got {chunk_rows!r}")
    return chunk_rows


def _prepare(
    hidden: Any,
    weight: Any,
    bias: Any,
    target: Any,
    *,
    ignore_index: int,
    class_weight: Tensor | None,
) -> tuple[LinearHead, Positions]:
    """Check the head and the target (through the public ``prepare``, on a zero-stride
    stand-in for the logits: no memory); return the head and the positions."""
    hidden, weight, bias = _check_head("", hidden, weight, bias)
    stand_in = hidden.new_zeros(()).expand(*hidden.shape[:-1], weight.shape[0])
    positions = prepare(
        stand_in,
        target,
        ignore_index=ignore_index,
        weight=class_weight,
        logits_name=LOGITS_NAME,
        binary=False,
    )
    return LinearHead(hidden, weight, bias), positions


def _row_weight(positions: Positions, reduction: str, dtype: torch.dtype) -> Tensor:
    """d loss / d loss_i of ``_reduce``'s mean or sum: w_i (mask or ``weight[y_i]``), over
    sum_i w_i for mean (1 when that sum is 0)."""
    weight = positions.mask if positions.sample_weight is None else positions.sample_weight
    weight = weight.reshape(-1).to(dtype)
    if reduction == "sum":
        return weight
    total = weight.sum()
    return weight / torch.where(total > 0, total, torch.ones_like(total))


def _linear_loss(
    head: LinearHead,
    positions: Positions,
    mode: str,
    reduction: str,
    chunk_rows: int | None,
    teacher: LinearHead | None = None,
    **params: Any,
) -> Tensor:
    """Reduced loss of ``mode`` through the fused linear-head kernel (``params``: those of
    ``LossSpec``, with ``previous`` of the stand-in logits' shape or the positions' shape)."""
    shape = positions.mask.shape
    k = head.weight.shape[0]
    previous = params.get("previous")
    if previous is not None:  # (..., V) probabilities, or q_y gathered to the positions
        by_class = previous.dim() > len(shape)
        params["previous"] = previous.reshape(-1, k) if by_class else previous.reshape(-1)
    if positions.probs is not None:
        params["soft_target"] = positions.probs.reshape(-1, k)
    labels = None if positions.index is None else positions.index.reshape(-1)
    student = LinearHead(head.hidden.reshape(-1, head.hidden.shape[-1]), head.weight, head.bias)
    if teacher is not None:
        flat = teacher.hidden.reshape(-1, teacher.hidden.shape[-1])
        teacher = LinearHead(flat, teacher.weight, teacher.bias)
    row_weight = None
    if reduction != "none":
        row_weight = _row_weight(positions, reduction, positions.dtype)
    spec = LossSpec(mode=mode, chunk_rows=chunk_rows, **params)
    loss, per_row = fused_linear_loss(
        student, labels, positions.mask.reshape(-1), spec, teacher, row_weight
    )
    _check_finite_loss(per_row.view(shape), head, teacher)
    if reduction == "none":
        return _reduce(loss.view(shape), positions.mask, positions.sample_weight, "none")
    return loss


def _check_finite_loss(per_row: Tensor, head: LinearHead, teacher: LinearHead | None) -> None:
    """Raise if a counted position's loss is not finite, naming the input that made it so:
    that position's hidden row (student, then teacher), else a non-finite head parameter,
    else the logits overflowed. One pass over ``per_row``; the rest only on the error path."""
    finite = torch.isfinite(per_row)
    if bool(finite.all()):
        return
    first = int((~finite).flatten().nonzero()[0])
    position = tuple(int(i) for i in torch.unravel_index(torch.tensor(first), per_row.shape))
    heads = {"": head} if teacher is None else {"": head, "teacher_": teacher}
    for prefix, part in heads.items():
        row = part.hidden.reshape(-1, part.hidden.shape[-1])[first]
        bad = ~torch.isfinite(row)
        if bool(bad.any()):
            j = int(bad.nonzero()[0])
            raise ValueError(
                f"{prefix}hidden must be finite (no NaN or inf), got {row[j].item()} at "
                f"position {position + (j,)}"
            )
    for prefix, part in heads.items():
        check_finite(f"{prefix}weight", part.weight)
        if part.bias is not None:
            check_finite(f"{prefix}bias", part.bias)
    largest = 0.0
    for part in heads.values():
        row = part.hidden.reshape(-1, part.hidden.shape[-1])[first : first + 1]
        logits = LinearHead(row, part.weight, part.bias).logits()
        largest = max(largest, float(logits.detach().abs().max()))
    raise ValueError(
        f"the loss overflowed at position {position} with finite inputs: the logits are too "
        f"large for the compute dtype (largest |logit| in that row: {largest})"
    )


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
    check_reduction(reduction)
    chunk_rows = _check_chunk_rows(chunk_rows)
    head, positions = _prepare(
        hidden, weight, bias, target, ignore_index=ignore_index, class_weight=class_weight
    )
    return _linear_loss(head, positions, "hard", reduction, chunk_rows)


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
    check_reduction(reduction)
    eps = check_smoothing(smoothing)
    chunk_rows = _check_chunk_rows(chunk_rows)
    head, positions = _prepare(
        hidden, weight, bias, target, ignore_index=ignore_index, class_weight=class_weight
    )
    if prior is not None:
        prior = check_prior(prior, positions.num_classes, positions.logits)
    return _linear_loss(head, positions, "ls", reduction, chunk_rows, eps=eps, prior=prior)


def linear_distillation_loss(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor | None,
    bias: Tensor | None = None,
    *,
    teacher_hidden: Tensor,
    teacher_weight: Tensor,
    teacher_bias: Tensor | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    standardize: bool = False,
    ignore_index: int = -100,
    reduction: str = "mean",
    class_weight: Tensor | None = None,
    chunk_rows: int | None = None,
) -> Tensor:
    """``distillation_loss(s, t, target, temperature, alpha, divergence=..., beta=...,
    standardize=...)`` with s = F.linear(hidden, weight, bias) and t = F.linear(teacher_hidden,
    teacher_weight, teacher_bias), neither built: ``(1 - alpha) CE(s, y) + alpha T^2
    D(softmax(t/T), softmax(s/T))``, D the forward KL (Hinton et al., 2015), reverse KL,
    generalized JSD or total variation (see ``distillation_loss``). The teacher's head runs
    chunk by chunk too and gets no gradient; its hidden size may differ from the student's,
    its vocabulary may not. ``target=None`` needs ``alpha=1``."""
    check_reduction(reduction)
    temperature = check_temperature(temperature)
    alpha = check_alpha(alpha)
    divergence = check_divergence(divergence)
    beta = check_beta(beta)
    standardize = check_flag("standardize", standardize)
    chunk_rows = _check_chunk_rows(chunk_rows)
    if divergence != "jsd" and beta != 0.5:
        raise ValueError(
            f"beta is only used by divergence='jsd', got beta={beta} with divergence={divergence!r}"
        )
    if target is None and alpha < 1.0:
        raise ValueError(
            f"target=None is only allowed with alpha=1 (pure distillation), got alpha={alpha}; "
            "pass target for the hard cross-entropy term"
        )
    head, positions = _prepare(
        hidden, weight, bias, target, ignore_index=ignore_index, class_weight=class_weight
    )
    teacher = _teacher_head(head, teacher_hidden, teacher_weight, teacher_bias)
    return _linear_loss(
        head,
        positions,
        "kd",
        reduction,
        chunk_rows,
        teacher,
        temperature=temperature,
        alpha=alpha,
        divergence=divergence,
        beta=beta,
        standardize=standardize,
    )


def _teacher_head(
    head: LinearHead, teacher_hidden: Any, teacher_weight: Any, teacher_bias: Any
) -> LinearHead:
    """The teacher's head, checked against the student's positions and vocabulary."""
    teacher = LinearHead(
        *_check_head(
            "teacher_", teacher_hidden, teacher_weight, teacher_bias, head.hidden.shape[:-1]
        )
    )
    vocab, teacher_vocab = head.weight.shape[0], teacher.weight.shape[0]
    if teacher_vocab != vocab:
        raise ValueError(
            f"teacher_weight has {teacher_vocab} classes (rows), weight has {vocab}: the "
            "teacher's head must have the student's vocabulary size"
        )
    if teacher.hidden.device != head.hidden.device:
        raise ValueError(
            f"teacher_hidden is on {teacher.hidden.device} but hidden on {head.hidden.device}"
        )
    return teacher


def linear_decoupled_distillation_loss(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None = None,
    *,
    teacher_hidden: Tensor,
    teacher_weight: Tensor,
    teacher_bias: Tensor | None = None,
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
    with both heads' logits made chunk by chunk: ``ce_weight CE(s, y) + T^2 (alpha TCKD +
    beta NCKD)`` (DKD, Zhao et al., 2022). Needs class indices."""
    check_reduction(reduction)
    temperature = check_temperature(temperature)
    alpha = check_loss_weight("alpha", alpha)
    beta = check_loss_weight("beta", beta)
    ce_weight = check_loss_weight("ce_weight", ce_weight)
    chunk_rows = _check_chunk_rows(chunk_rows)
    if target is None:
        raise ValueError(
            "target is required for linear_decoupled_distillation_loss: TCKD and NCKD split the "
            "classes at the target class, got target=None"
        )
    head, positions = _prepare(
        hidden, weight, bias, target, ignore_index=ignore_index, class_weight=class_weight
    )
    if positions.probs is not None:
        raise ValueError(
            "linear_decoupled_distillation_loss needs class indices of shape "
            f"{tuple(head.hidden.shape[:-1])}: TCKD and NCKD split the classes at the target "
            f"class, got class probabilities of shape {tuple(target.shape)}"
        )
    teacher = _teacher_head(head, teacher_hidden, teacher_weight, teacher_bias)
    return _linear_loss(
        head,
        positions,
        "dkd",
        reduction,
        chunk_rows,
        teacher,
        temperature=temperature,
        tckd_weight=alpha,
        nckd_weight=beta,
        ce_weight=ce_weight,
    )


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
    check_reduction(reduction)
    alpha = check_alpha(alpha)
    chunk_rows = _check_chunk_rows(chunk_rows)
    if target is None:
        raise ValueError("target is required for linear_self_correction_loss, got target=None")
    head, positions = _prepare(
        hidden, weight, bias, target, ignore_index=ignore_index, class_weight=class_weight
    )
    previous = check_previous(previous, positions)
    return _linear_loss(
        head, positions, "reloop", reduction, chunk_rows, previous=previous, alpha=alpha
    )
