"""The one set of input checks: every rule about an argument lives here, once.

Every check raises ValueError (TypeError for a wrong type) naming the argument, the value
and what is allowed. Settings (numbers and flags) are checked where they are set: by the
public functions of ``softlabel.functional`` and by the target sources (at construction
and for every value a schedule can take). Tensors are checked once per call, at a cost of
O(N) in the number of positions, never O(N K): class indices, binary targets and previous
probabilities where they are read, while the finiteness of multiclass logits (and teacher
logits) is checked on the per-row losses the engine computes anyway (``check_finite_rows``),
since a NaN or inf logit in a row that counts makes that row's loss non-finite; probability
rows by the row minima and sums the engine takes while it reads them
(``check_probability_rows``). The offending value is only read on the error path. The
engine (``softlabel.kernels.engine``) checks nothing: it trusts its inputs.

How the task is decided (``binary`` argument of every loss):

- integer ``target`` of shape ``logits.shape[:-1]``: multiclass class indices;
- floating ``target`` of the logits' shape ``(..., K)`` with ``binary`` not True: class
  probabilities (soft targets, as ``torch.nn.functional.cross_entropy`` reads them);
- ``binary=True``: one logit per position, target of the logits' shape holding 0/1 (binary or
  multi-label, independent sigmoids); 1-D logits with a target of the same shape are binary
  by default, since they have no class dimension.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import torch
from torch import Tensor

from softlabel.kernels.spec import DIVERGENCES, compute_dtype

#: Reductions of every loss.
REDUCTIONS = ("mean", "sum", "none")

#: How far a row of class probabilities (probability targets, prior vectors, rows of a prior
#: matrix) may sum from 1: one tolerance for every such row.
PROBABILITY_TOLERANCE = 1e-3

#: Largest temperature accepted: T^2 KL(p_t^T || p_s^T) loses precision as T grows (the KL
#: shrinks as 1/T^2 while its rounding error does not); above 1e3 it is mostly rounding in
#: float32, and T^2 overflows float32 near 1.8e19.
MAX_TEMPERATURE = 1e3


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


def check_smoothing(smoothing: Any, name: str = "smoothing") -> float:
    """Label smoothing's eps, in [0, 1)."""
    value = _as_float(name, smoothing)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {smoothing!r}")
    return value


def check_alpha(alpha: Any) -> float:
    """The weight of the soft term (1 - alpha on the hard one), in [0, 1]."""
    value = _as_float("alpha", alpha)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    return value


def check_margin(margin: Any) -> float:
    """MbLS's logit-distance margin: a finite number >= 0."""
    return check_loss_weight("margin", margin)


def check_penalty(penalty: Any) -> float:
    """MbLS's penalty weight: a finite number >= 0."""
    return check_loss_weight("penalty", penalty)


def check_confidence_margin(margin: Any) -> float:
    """AdaLabel's margin below the eps cap, in [0, 1) (and <= (K - 1) / K, checked with K)."""
    value = _as_float("margin", margin)
    if not 0.0 <= value < 1.0:  # NaN fails too
        raise ValueError(f"margin must be in [0, 1), got {margin!r}")
    return value


def check_power(power: Any) -> float:
    """AdaLabel's exponent of p_y / p_max: a finite number >= 0."""
    return check_loss_weight("power", power)


def check_correct_prob(correct_prob: Any, num_classes: int | None = None) -> float:
    """Tf-KD's virtual teacher's probability of the true class: in (1/K, 1), or in (0, 1)
    while K is not known yet."""
    value = _as_float("correct_prob", correct_prob)
    low = 0.0 if num_classes is None else 1.0 / num_classes
    if not low < value < 1.0:
        allowed = (
            "(0, 1)" if num_classes is None else f"(1/K, 1) = ({low:.6g}, 1) for K={num_classes}"
        )
        raise ValueError(f"correct_prob must be in {allowed}, got {correct_prob!r}")
    return value


def check_divergence(divergence: Any) -> str:
    if not isinstance(divergence, str) or divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {list(DIVERGENCES)}, got {divergence!r}")
    return divergence


def check_beta(beta: Any) -> float:
    """The JSD's mixture weight of the teacher, in [0, 1]."""
    value = _as_float("beta", beta)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta!r}")
    return value


#: Default mixture weight of the JSD and default skew of the skew divergences.
DEFAULT_BETA = 0.5
DEFAULT_SKEW = 0.1

_SKEWED = ("skew_forward_kl", "skew_reverse_kl")


def check_skew(skew: Any) -> float:
    """The skew divergences' mixing weight a (DistiLLM), in [0, 1): NaN and inf fail too."""
    value = _as_float("skew", skew)
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise ValueError(f"skew must be a finite number in [0, 1), got {skew!r}")
    return value


def check_divergence_settings(divergence: Any, beta: Any, skew: Any) -> tuple[str, float, float]:
    """``divergence`` with its own parameter: ``beta`` is read by the JSD only and ``skew`` by
    the skew divergences only; the other one must keep its default (a value set for a
    divergence that ignores it is refused rather than silently unused)."""
    divergence = check_divergence(divergence)
    beta, skew = check_beta(beta), check_skew(skew)
    if divergence != "jsd" and beta != DEFAULT_BETA:
        raise ValueError(
            f"beta is only used by divergence='jsd', got beta={beta} with divergence={divergence!r}"
        )
    if divergence not in _SKEWED and skew != DEFAULT_SKEW:
        raise ValueError(
            f"skew is only used by divergence='skew_forward_kl' or 'skew_reverse_kl', got "
            f"skew={skew} with divergence={divergence!r}"
        )
    return divergence, beta, skew


def check_target_needed(target: Any, alpha: float) -> None:
    """A target is needed unless the hard term has weight 0 (``alpha`` = 1)."""
    if target is None and alpha < 1.0:
        raise ValueError(
            f"target=None is only allowed with alpha=1 (pure distillation), got alpha={alpha}; "
            "pass target for the hard cross-entropy term"
        )


def check_ignore_index(ignore_index: Any) -> int:
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
    return ignore_index


def check_chunk_rows(chunk_rows: Any) -> int | None:
    if chunk_rows is not None and (
        isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1
    ):
        raise ValueError(f"chunk_rows must be None or an int >= 1, got {chunk_rows!r}")
    return chunk_rows


def check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_loss_weight(name: str, value: Any) -> float:
    """A finite number >= 0 (DKD's alpha, beta and ce_weight, DIST's beta and gamma, MbLS's
    margin and penalty, AdaLabel's power)."""
    number = _as_float(name, value)
    if not 0.0 <= number < float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def check_temperature(temperature: Any) -> float:
    value = _as_float("temperature", temperature)
    if not 0.0 < value <= MAX_TEMPERATURE:
        raise ValueError(
            f"temperature must be a number in (0, {MAX_TEMPERATURE:g}], got {temperature!r}"
        )
    return value


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


def check_finite_rows(per_row: Tensor, rows: dict[str, Tensor | None]) -> None:
    """Raise if a per-position loss is not finite, naming the input that made it so.

    ``per_row`` has the positions' shape (0 at ignored positions); ``rows`` maps argument
    names to tensors ``(..., K)`` with one row per position. Cost: one pass over ``per_row``;
    the rows are only read on the error path.
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
    raise ValueError(
        f"the loss overflowed at position {position} with finite inputs: the logits are too "
        f"large for the compute dtype (largest |logit| in that row: {_row_abs_max(rows, first)})"
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


def topk_mass_tolerance(k: int) -> float:
    """How far a top-k reference's ``sum(exp(logprob)) + exp(tail)`` may be from 1: the values
    may have been stored in 16 bits (float16, bfloat16: unit roundoff u <= 2^-8) and converted
    since, and rounding log p by u moves p by at most p |log p| u, summing to at most
    u log(k + 1) (the entropy bound); twice that, plus 1e-4."""
    return 1e-4 + 2.0**-7 * math.log(k + 1)


def check_topk(
    index: Any, logprob: Any, tail: Any, lead: tuple[int, ...], vocab: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Types, shapes and devices of a top-k reference's fields for positions ``lead`` over a
    vocabulary of ``vocab`` ids; the ids' range and their uniqueness per position
    (O(N k log k)). Returns ``(index as int64, logprob, tail)``, detached."""
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
    if not 1 <= k < vocab:
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
        if low < 0 or high >= vocab:
            bad = ((index < 0) | (index >= vocab)).flatten().nonzero()[0]
            raise ValueError(
                f"reference.index must hold class ids in [0, {vocab}), got "
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
