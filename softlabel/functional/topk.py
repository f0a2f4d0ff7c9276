"""Distillation from a top-k teacher reference: k kept class ids plus one tail bucket.

An offline top-k cache (DistillKit-style, ``docs/teacher_cache.md``) keeps, per position,
the teacher's k most probable ids, their log-probabilities and the log of the mass left
over. Both distributions are compared on the k + 1 buckets {k kept ids, every other id},
which the stored numbers describe exactly. The engine computes it (mode ``kd`` with a
``TopKLogits`` teacher) on logits and on the fused linear head alike.
"""

from __future__ import annotations

from torch import Tensor

from softlabel.functional._engine import spec_loss
from softlabel.functional.distillation import distillation_spec
from softlabel.kernels.checks import DEFAULT_BETA, DEFAULT_SKEW, check_logits
from softlabel.kernels.references import TopKLogits

__all__ = ["TopKLogits", "topk_distillation_loss"]


def topk_distillation_loss(
    logits: Tensor,
    reference: TopKLogits,
    target: Tensor | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
    *,
    divergence: str = "forward_kl",
    beta: float = DEFAULT_BETA,
    skew: float = DEFAULT_SKEW,
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
    ``reverse_kl``, ``jsd`` with ``beta``, ``tvd``, the skew KLs with ``skew``) between them,
    times T^2 (Hinton et al., 2015). The CE uses the full vocabulary; ``mean`` is the
    batchmean over the positions that count (target != ``ignore_index``; every position
    without a target, which needs ``alpha=1``). The student's tail is a masked log-sum-exp,
    never ``log(1 - sum p)``.

    At T = 1 with ``forward_kl`` this is exactly the KL between the teacher's and the
    student's distributions coarsened to {k kept ids, rest} (no approximation: the stored
    numbers describe those distributions exactly; by the data-processing inequality it is at
    most the full-vocabulary KL). At T > 1 the tail is softened as one category: its weight
    is ``R^(1/T)`` for the teacher's tail mass R, a LOWER bound of the true softened tail
    ``sum_tail p_c^(1/T)`` (x^(1/T) is subadditive), while spreading R uniformly over the
    V - k ids (``softlabel.cache.reconstruct_topk_logits``) gives ``(V-k)^(1-1/T) R^(1/T)``,
    an UPPER bound (power-mean inequality): the bucket no longer over-softens the tail.

    The teacher buckets are renormalized by the softmax; they must be log-probabilities
    (<= 0) summing to 1 within the storage rounding. A bucket of probability 0
    (``tail = -inf``) counts as ``0 log 0 = 0`` in values and gradients; ``reverse_kl`` (and
    ``jsd`` with beta = 1, ``skew_reverse_kl`` with skew = 0) refuses it, being infinite
    there. Validation costs O(N k log k). Teacher fields get no gradient. This is
    ``distillation_loss`` with a ``TopKLogits`` teacher.
    """
    if not isinstance(reference, TopKLogits):
        raise TypeError(
            f"reference must be a softlabel.targets.TopKLogits(index, logprob, tail), got "
            f"{type(reference).__name__}"
        )
    check_logits("logits", logits)
    if logits.dim() < 2 or logits.shape[-1] < 2:
        raise ValueError(
            f"logits must be (..., V) with V >= 2 classes, e.g. (N, V) or (B, L, V), got shape "
            f"{tuple(logits.shape)}"
        )
    spec = distillation_spec(temperature, alpha, divergence, beta, skew)
    return spec_loss(
        logits,
        target,
        spec,
        reference,
        ignore_index=ignore_index,
        reduction=reduction,
        weight=weight,
        binary=False,
        name="topk_distillation_loss",
    )
