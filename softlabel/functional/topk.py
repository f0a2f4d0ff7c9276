"""Distillation from a top-k teacher reference: k kept class ids plus one tail bucket.

An offline top-k cache (DistillKit-style, ``docs/teacher_cache.md``) keeps, per position,
the teacher's k most probable ids, their log-probabilities and the log of the mass left
over. Both distributions are compared on the k + 1 buckets {k kept ids, every other id},
which the stored numbers describe exactly.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from softlabel.functional._reduction import _reduce
from softlabel.functional._validation import (
    _position,
    check_alpha,
    check_beta,
    check_divergence,
    check_finite_rows,
    check_logits,
    check_reduction,
    check_temperature,
    compute_dtype,
    prepare,
)

#: rows of the student logits per chunk in :meth:`TopKLogits.from_logits` (bounds the
#: float32 log-softmax buffer at about 64 MiB for V = 128k)
_CHUNK_ELEMENTS = 1 << 24


class TopKLogits(NamedTuple):
    """A top-k teacher reference: ``index`` (..., k) class ids, ``logprob`` (..., k) the
    teacher's log-probabilities of those ids at T = 1, ``tail`` (...) the log of the
    teacher's remaining mass ``log(1 - sum_topk p) = logsumexp`` of the other ids' log-probs.

    A NamedTuple: slice every field alike, ``TopKLogits(*(t[:, :-1] for t in ref))``.
    """

    index: Tensor
    logprob: Tensor
    tail: Tensor

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> TopKLogits:
        """Move every field to ``device``; ``dtype`` (floating) applies to ``logprob`` and
        ``tail`` only, the ids stay integers."""
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating dtype (logprob and tail), got {dtype}")
        return TopKLogits(
            self.index.to(device=device),
            self.logprob.to(device=device, dtype=dtype),
            self.tail.to(device=device, dtype=dtype),
        )

    @classmethod
    def from_logits(cls, logits: Tensor, k: int) -> TopKLogits:
        """The exact top-k reference of teacher ``logits`` (..., V), computed in float32
        (float64 for float64 logits), without gradient.

        ``logp = log_softmax(logits)``; ``index, logprob = topk(logp, k)`` (most probable
        first); ``tail = logsumexp(logp over the other V - k ids)``, a masked log-sum-exp,
        so a tail far below 1e-7 keeps its relative precision (``log(1 - sum p)`` would not).
        """
        check_logits("logits", logits)
        if logits.dim() < 1 or logits.shape[-1] < 2:
            raise ValueError(f"logits must be (..., V) with V >= 2, got {tuple(logits.shape)}")
        vocab = logits.shape[-1]
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < vocab:
            raise ValueError(f"k must be an integer in [1, V - 1] = [1, {vocab - 1}], got {k!r}")
        lead = logits.shape[:-1]
        flat = logits.detach().reshape(-1, vocab)
        step = max(1, _CHUNK_ELEMENTS // vocab)
        parts = []
        with torch.no_grad():
            for chunk in flat.split(step):
                logp = torch.log_softmax(chunk.to(compute_dtype(chunk)), dim=-1)
                logprob, index = logp.topk(k, dim=-1, largest=True, sorted=True)
                tail = torch.logsumexp(logp.scatter_(-1, index, -math.inf), dim=-1)
                parts.append((index, logprob, tail))
        index, logprob, tail = (torch.cat(p) for p in zip(*parts))
        return cls(index.reshape(*lead, k), logprob.reshape(*lead, k), tail.reshape(lead))


def _check_reference(reference: Any, logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Types, shapes and devices of a top-k reference against ``logits`` (..., V); the ids'
    range and uniqueness (O(N k log k)). Returns ``(index as int64, logprob, tail)``."""
    if not isinstance(reference, TopKLogits):
        raise TypeError(
            f"reference must be a softlabel.targets.TopKLogits(index, logprob, tail), got "
            f"{type(reference).__name__}"
        )
    index, logprob, tail = reference
    for name, value in zip(TopKLogits._fields, reference):
        if not isinstance(value, Tensor):
            raise TypeError(f"reference.{name} must be a torch.Tensor, got {type(value).__name__}")
        if value.device != logits.device:
            raise ValueError(
                f"reference.{name} is on {value.device} but the logits on {logits.device}"
            )
    if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        raise TypeError(f"reference.index must hold integer class ids, got {index.dtype}")
    for name, value in (("logprob", logprob), ("tail", tail)):
        if not value.is_floating_point():
            raise TypeError(f"reference.{name} must have a floating dtype, got {value.dtype}")
    lead, vocab = tuple(logits.shape[:-1]), logits.shape[-1]
    if index.dim() != logits.dim() or tuple(index.shape[:-1]) != lead:
        raise ValueError(
            f"reference.index must have shape (*logits.shape[:-1], k) = {lead + ('k',)}, got "
            f"{tuple(index.shape)}"
        )
    k = index.shape[-1]
    if not 1 <= k < vocab:
        raise ValueError(
            f"reference.index keeps k={k} ids per position; k must be in [1, V - 1] = "
            f"[1, {vocab - 1}] (with k >= V there is no tail: use distillation_loss)"
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


def _normalization_tolerance(k: int) -> float:
    """How far ``sum_topk p + exp(tail)`` may be from 1: the values may have been stored in
    16 bits (float16, bfloat16: unit roundoff u <= 2^-8) and converted since, and rounding
    log p by u moves p by at most p |log p| u, summing to at most u log(k + 1) (the entropy
    bound); twice that, plus 1e-4."""
    return 1e-4 + 2.0**-7 * math.log(k + 1)


def _check_teacher_buckets(
    buckets: Tensor, log_total: Tensor, mask: Tensor, strict_support: bool
) -> None:
    """At the positions that count: no NaN, the buckets summing to 1 within
    :func:`_normalization_tolerance` (a bucket above 1 or +inf fails it), and with
    ``strict_support`` (reverse KL) no bucket of probability 0. O(N k)."""
    k = buckets.shape[-1] - 1
    bad = torch.isnan(buckets).any(dim=-1) & mask
    if bool(bad.any()):
        first = int(bad.flatten().nonzero()[0])
        column = int(torch.isnan(buckets.reshape(-1, k + 1)[first]).nonzero()[0])
        name = f"reference.logprob[..., {column}]" if column < k else "reference.tail"
        raise ValueError(
            f"{name} must be a log-probability, got NaN at position {_position(first, bad.shape)}"
        )
    tolerance = _normalization_tolerance(k)
    off = ~((log_total.exp() - 1.0).abs() <= tolerance) & mask
    if bool(off.any()):
        first = int(off.flatten().nonzero()[0])
        total = log_total.flatten()[first].exp().item()
        raise ValueError(
            f"reference: sum(exp(logprob)) + exp(tail) must be 1 (within {tolerance:.2g}, the "
            f"rounding of 16-bit storage), got {total:.6g} at position "
            f"{_position(first, off.shape)}; logprob "
            "must be the teacher's log-probabilities at T = 1 and tail the log of the rest"
        )
    if strict_support:
        zero = torch.isneginf(buckets).any(dim=-1) & mask
        if bool(zero.any()):
            first = int(zero.flatten().nonzero()[0])
            raise ValueError(
                f"divergence='reverse_kl' is infinite at position {_position(first, zero.shape)}: "
                "the teacher gives a bucket probability 0 (a -inf logprob or tail) where the "
                "student's is positive; use 'forward_kl', 'jsd' with beta < 1, or 'tvd'"
            )


def _xlogy_kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    """``sum_c a_c (log a_c - log b_c)`` with ``0 log 0 = 0`` (``a`` carries no gradient
    where it is 0)."""
    a = log_a.exp()
    safe = torch.where(a > 0, log_a, torch.zeros_like(log_a))
    return (a * (safe - log_b)).sum(dim=-1)


def _bucket_divergence(log_q: Tensor, log_p: Tensor, divergence: str, beta: float) -> Tensor:
    """D(q || p) over the last dimension for teacher ``log_q`` and student ``log_p``."""
    if divergence == "jsd" and beta in (0.0, 1.0):
        divergence = "forward_kl" if beta == 0.0 else "reverse_kl"
    if divergence == "forward_kl":
        return _xlogy_kl(log_q, log_p)
    if divergence == "reverse_kl":
        return _xlogy_kl(log_p, log_q)
    if divergence == "tvd":
        return 0.5 * (log_q.exp() - log_p.exp()).abs().sum(dim=-1)
    log_m = torch.logaddexp(log_q + math.log(beta), log_p + math.log1p(-beta))
    return beta * _xlogy_kl(log_q, log_m) + (1.0 - beta) * _xlogy_kl(log_p, log_m)


def topk_distillation_loss(
    logits: Tensor,
    reference: TopKLogits,
    target: Tensor | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
    *,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
) -> Tensor:
    """``(1 - alpha) * CE(s, y) + alpha * T^2 * D(q^T || p^T)`` on k + 1 buckets.

    ``reference = TopKLogits(index, logprob, tail)`` for student ``logits`` (..., V), e.g.
    (N, V) or (B, L, V): per position the teacher's k kept ids, their log-probabilities at
    T = 1 and the log of its remaining mass. Both distributions are coarsened to the buckets
    {the k kept ids, every other id}:

        student bucket logits  u = [s[index], logsumexp(s over the other V - k ids)]
        teacher bucket logits  t = [logprob, tail]
        p^T = softmax(u / T),  q^T = softmax(t / T)

    and ``D`` is one of the divergences of ``distillation_loss`` (``forward_kl``,
    ``reverse_kl``, ``jsd`` with ``beta``, ``tvd``) between them, times T^2 (Hinton et al.,
    2015). The CE uses the full vocabulary; ``mean`` is the batchmean over the positions
    that count (target != ``ignore_index``; every position without a target, which needs
    ``alpha=1``). The student's tail is a masked log-sum-exp, never ``log(1 - sum p)``.

    At T = 1 with ``forward_kl`` this is exactly the KL between the teacher's and the
    student's distributions coarsened to {k kept ids, rest} (no approximation: the stored
    numbers describe those distributions exactly; by the data-processing inequality it is at
    most the full-vocabulary KL). At T > 1 the tail is softened as one category: its weight
    is ``R^(1/T)`` for the teacher's tail mass R, a LOWER bound of the true softened tail
    ``sum_tail p_c^(1/T)`` (x^(1/T) is subadditive), while spreading R uniformly over the
    V - k ids (``softlabel.cache.reconstruct_topk_logits``) gives ``(V-k)^(1-1/T) R^(1/T)``,
    an UPPER bound (power-mean inequality): the bucket no longer over-softens the tail.

    The teacher buckets are renormalized by the softmax; they must sum to 1 within the
    storage rounding. A bucket of probability 0 (``tail = -inf``) counts as ``0 log 0 = 0``
    in values and gradients; ``reverse_kl`` (and ``jsd`` with beta = 1) refuses it, being
    infinite there. Validation costs O(N k). Teacher fields get no gradient.
    """
    check_reduction(reduction)
    temperature = check_temperature(temperature)
    alpha = check_alpha(alpha)
    divergence = check_divergence(divergence)
    beta = check_beta(beta)
    if divergence != "jsd" and beta != 0.5:
        raise ValueError(
            f"beta is only used by divergence='jsd', got beta={beta} with divergence={divergence!r}"
        )
    if target is None and alpha < 1.0:
        raise ValueError(
            f"target=None is only allowed with alpha=1 (pure distillation), got alpha={alpha}; "
            "pass target for the hard cross-entropy term"
        )
    check_logits("logits", logits)
    if logits.dim() < 2 or logits.shape[-1] < 2:
        raise ValueError(
            f"logits must be (..., V) with V >= 2 classes, e.g. (N, V) or (B, L, V), got shape "
            f"{tuple(logits.shape)}"
        )
    index, logprob, tail = _check_reference(reference, logits)
    positions = prepare(
        logits, target, ignore_index=ignore_index, weight=weight, logits_name="logits", binary=False
    )
    mask = positions.mask
    dtype = compute_dtype(logits)
    s = logits.to(dtype)
    kept = s.gather(-1, index)
    rest = torch.logsumexp(s.scatter(-1, index, -math.inf), dim=-1)
    student = torch.cat([kept, rest.unsqueeze(-1)], dim=-1)

    teacher = torch.cat([logprob.to(dtype), tail.to(dtype).unsqueeze(-1)], dim=-1)
    log_total = torch.logsumexp(teacher, dim=-1)
    strict = divergence == "reverse_kl" or (divergence == "jsd" and beta == 1.0)
    _check_teacher_buckets(teacher, log_total, mask, strict)
    teacher = torch.where(mask.unsqueeze(-1), teacher, torch.zeros_like(teacher))

    log_q = torch.log_softmax(teacher / temperature, dim=-1)
    log_p = torch.log_softmax(student / temperature, dim=-1)
    per_position = temperature * temperature * _bucket_divergence(log_q, log_p, divergence, beta)
    if alpha < 1.0:
        log_z = torch.logaddexp(torch.logsumexp(kept, dim=-1), rest)
        if positions.probs is not None:
            probs = positions.probs.to(dtype)
            hard = (probs * (log_z.unsqueeze(-1) - s)).sum(dim=-1)
        else:
            assert positions.index is not None
            hard = log_z - s.gather(-1, positions.index.unsqueeze(-1)).squeeze(-1)
        per_position = (1.0 - alpha) * hard + alpha * per_position
    check_finite_rows(
        torch.where(mask, per_position.detach(), torch.zeros_like(per_position.detach())),
        {"logits": logits},
    )
    return _reduce(per_position, mask, positions.sample_weight, reduction)
