"""The rules of the teacher references: dense teacher logits, a top-k reference, a head."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from softlabel.kernels.checks.positions import _position, check_finite, check_logits
from softlabel.kernels.spec import compute_dtype


def check_teacher_positions(teacher_logits: Any, student_logits: Tensor) -> Tensor:
    """Teacher logits over the student's positions in a vocabulary of their own (a teacher
    with another tokenizer, aligned to the student's positions), detached: (..., V_t) with
    V_t >= 2; finiteness is checked on the per-row loss."""
    check_logits("teacher_logits", teacher_logits)
    lead = tuple(student_logits.shape[:-1])
    if tuple(teacher_logits.shape[:-1]) != lead or teacher_logits.shape[-1] < 2:
        raise ValueError(
            f"teacher_logits must have the student's positions {lead} and a vocabulary of its "
            f"own (V_t >= 2) last, got {tuple(teacher_logits.shape)}"
        )
    if teacher_logits.device != student_logits.device:
        raise ValueError(
            f"teacher_logits is on {teacher_logits.device} but student_logits on "
            f"{student_logits.device}"
        )
    return teacher_logits.detach()


def check_teacher(teacher_logits: Any, student_logits: Tensor, binary: bool = False) -> Tensor:
    """Teacher logits of the student's shape, detached. Binary ones are checked for NaN/inf
    here (O(N)) and cast to the compute dtype; multiclass ones are used as given and their
    finiteness is checked on the per-row loss (``check_finite_rows``)."""
    check_logits("teacher_logits", teacher_logits)
    student_shape, teacher_shape = student_logits.shape, teacher_logits.shape
    if (
        not binary
        and teacher_shape != student_shape
        and teacher_shape[:-1] == student_shape[:-1]
        and len(teacher_shape) == len(student_shape)
    ):
        raise ValueError(
            f"teacher_logits must score the student's vocabulary (the same classes in the same "
            f"order): the student's logits {tuple(student_shape)} have {student_shape[-1]} "
            f"classes, teacher_logits {tuple(teacher_shape)} has {teacher_shape[-1]}"
        )
    if teacher_shape != student_shape:
        raise ValueError(
            "teacher_logits must have the student's shape "
            f"{tuple(student_logits.shape)}, got {tuple(teacher_logits.shape)}"
        )
    if teacher_logits.device != student_logits.device:
        raise ValueError(
            f"teacher_logits is on {teacher_logits.device} but student_logits on "
            f"{student_logits.device}"
        )
    if binary:
        check_finite("teacher_logits", teacher_logits)
        return teacher_logits.detach().to(compute_dtype(student_logits))
    return teacher_logits.detach()


def topk_mass_tolerance(k: int) -> float:
    """How far a top-k reference's ``sum(exp(logprob)) + exp(tail)`` may be from 1: the values
    may have been stored in 16 bits (float16, bfloat16: unit roundoff u <= 2^-8) and converted
    since, and rounding log p by u moves p by at most p |log p| u, summing to at most
    u log(k + 1) (the entropy bound); twice that, plus 1e-4."""
    return 1e-4 + 2.0**-7 * math.log(k + 1)


def check_topk(
    index: Any,
    logprob: Any,
    tail: Any,
    lead: tuple[int, ...],
    vocab: int | None,
    device: torch.device,
) -> tuple[Tensor, Tensor, Tensor]:
    """Types, shapes and devices of a top-k reference's fields for positions ``lead`` over a
    vocabulary of ``vocab`` ids (None: the teacher's own vocabulary, of unknown size); the
    ids' range and their uniqueness per position (O(N k log k)). Returns ``(index as int64,
    logprob, tail)``, detached."""
    for name, value in (("index", index), ("logprob", logprob), ("tail", tail)):
        if not isinstance(value, Tensor):
            raise TypeError(f"reference.{name} must be a torch.Tensor, got {type(value).__name__}")
        if value.device != device:
            raise ValueError(f"reference.{name} is on {value.device} but the logits on {device}")
    if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        raise TypeError(f"reference.index must hold integer class ids, got {index.dtype}")
    for name, value in (("logprob", logprob), ("tail", tail)):
        if not value.is_floating_point():
            raise TypeError(f"reference.{name} must have a floating dtype, got {value.dtype}")
    if index.dim() != len(lead) + 1 or tuple(index.shape[:-1]) != lead:
        raise ValueError(
            f"reference.index must have shape (*logits.shape[:-1], k) = {lead + ('k',)}, got "
            f"{tuple(index.shape)}"
        )
    k = index.shape[-1]
    if vocab is None and k < 1:
        raise ValueError(f"reference.index keeps k={k} ids per position; k must be >= 1")
    if vocab is not None and not 1 <= k < vocab:
        raise ValueError(
            f"reference.index keeps k={k} ids per position; k must be in [1, V - 1] = "
            f"[1, {vocab - 1}] (with k >= V there is no tail: give the dense teacher logits)"
        )
    if logprob.shape != index.shape:
        raise ValueError(
            f"reference.logprob must have reference.index's shape {tuple(index.shape)}, got "
            f"{tuple(logprob.shape)}"
        )
    if tuple(tail.shape) != lead:
        raise ValueError(
            f"reference.tail must have shape logits.shape[:-1] = {lead}, got {tuple(tail.shape)}"
        )
    if index.numel():
        low, high = int(index.min()), int(index.max())
        if low < 0 or (vocab is not None and high >= vocab):
            bad = ((index < 0) | (index >= vocab)).flatten().nonzero()[0]
            raise ValueError(
                f"reference.index must hold class ids in [0, {vocab or 'V_teacher'}), got "
                f"{index.flatten()[bad].item()} at position {_position(int(bad), index.shape)}"
            )
        ordered = index.sort(dim=-1).values
        repeated = (ordered[..., 1:] == ordered[..., :-1]).any(dim=-1)
        if bool(repeated.any()):
            first = int(repeated.flatten().nonzero()[0])
            raise ValueError(
                f"reference.index must hold k distinct ids per position, got a repeated id at "
                f"position {_position(first, repeated.shape)}"
            )
    return index.long(), logprob.detach(), tail.detach()


def check_topk_buckets(buckets: Tensor, mask: Tensor, strict_support: str | None) -> None:
    """The teacher's k + 1 bucket log-probabilities ``[logprob, tail]`` (..., k + 1) at the
    positions that count (``mask``): no NaN and none above 0 (a log-probability; -inf is
    probability 0), the buckets summing to 1 within ``topk_mass_tolerance``, and, when
    ``strict_support`` names a divergence that is infinite where the teacher gives probability
    0 (reverse KL), no bucket of probability 0. O(N k)."""
    k = buckets.shape[-1] - 1

    def first_bad(bad_entries: Tensor) -> tuple[int, int] | None:
        bad = bad_entries.any(dim=-1) & mask
        if not bool(bad.any()):
            return None
        first = int(bad.flatten().nonzero()[0])
        return first, int(bad_entries.reshape(-1, k + 1)[first].nonzero()[0])

    def named(column: int) -> str:
        return f"reference.logprob[..., {column}]" if column < k else "reference.tail"

    found = first_bad(torch.isnan(buckets))
    if found is not None:
        first, column = found
        raise ValueError(
            f"{named(column)} must be a log-probability, got NaN at position "
            f"{_position(first, mask.shape)}"
        )
    tolerance = topk_mass_tolerance(k)
    total = torch.logsumexp(buckets, dim=-1).exp()
    off = ~((total - 1.0).abs() <= tolerance) & mask
    if bool(off.any()):
        first = int(off.flatten().nonzero()[0])
        raise ValueError(
            f"reference: sum(exp(logprob)) + exp(tail) must be 1 (within {tolerance:.2g}, the "
            f"rounding of 16-bit storage), got {total.flatten()[first].item():.6g} at position "
            f"{_position(first, off.shape)}; logprob must be the teacher's log-probabilities at "
            "T = 1 and tail the log of the rest"
        )
    found = first_bad(buckets > 0)
    if found is not None:
        first, column = found
        value = buckets.reshape(-1, k + 1)[first, column].item()
        raise ValueError(
            f"{named(column)} must be a log-probability (<= 0), got {value} at position "
            f"{_position(first, mask.shape)}"
        )
    if strict_support is not None:
        zero = torch.isneginf(buckets).any(dim=-1) & mask
        if bool(zero.any()):
            first = int(zero.flatten().nonzero()[0])
            raise ValueError(
                f"divergence={strict_support} is infinite at position "
                f"{_position(first, zero.shape)}: the teacher gives a bucket probability 0 (a "
                "-inf logprob or tail) where the student's is positive; use 'forward_kl', 'jsd' "
                "with beta < 1, 'tvd', or a skew divergence with skew > 0"
            )


def check_head(
    prefix: str, hidden: Any, weight: Any, bias: Any, positions_shape: torch.Size | None = None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """A linear head's inputs: ``{prefix}hidden`` (..., H), ``{prefix}weight`` (V, H) with
    V >= 2, ``{prefix}bias`` (V,) or None, one dtype and device; ``positions_shape`` (the
    student's ...) when given."""
    names = {part: f"{prefix}{part}" for part in ("hidden", "weight", "bias")}
    for part, value in (("hidden", hidden), ("weight", weight), ("bias", bias)):
        if value is None and part == "bias":
            continue
        if not isinstance(value, Tensor):
            raise TypeError(f"{names[part]} must be a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(f"{names[part]} must have a floating dtype, got {value.dtype}")
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


def check_vocabulary_map(pairs: Any) -> Tensor:
    """A map between two vocabularies: (M, 2) int64 pairs (student id, teacher id) of the same
    token, M >= 1, ids >= 0, each student id and each teacher id at most once. O(M log M)."""
    if not isinstance(pairs, Tensor):
        try:
            pairs = torch.as_tensor(pairs)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"the vocabulary map must be (M, 2) pairs of ids, got {type(pairs).__name__}"
            ) from None
    if pairs.is_floating_point() or pairs.is_complex() or pairs.dtype == torch.bool:
        raise TypeError(f"the vocabulary map must hold integer ids, got {pairs.dtype}")
    if pairs.dim() != 2 or pairs.shape[1] != 2 or pairs.shape[0] < 1:
        raise ValueError(
            "the vocabulary map must have shape (M, 2), M >= 1: (student id, teacher id) per "
            f"matched token, got {tuple(pairs.shape)}"
        )
    pairs = pairs.detach().to("cpu", torch.long)
    if bool((pairs < 0).any()):
        raise ValueError(f"the vocabulary map must hold ids >= 0, got {int(pairs.min())}")
    for column, name in enumerate(("student", "teacher")):
        ordered = pairs[:, column].sort().values
        repeated = ordered[1:] == ordered[:-1]
        if bool(repeated.any()):
            value = int(ordered[1:][repeated][0])
            raise ValueError(f"the vocabulary map maps {name} id {value} more than once")
    return pairs
