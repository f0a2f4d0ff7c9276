"""The fused, chunked soft-target loss of logits (N, K): the engine's public entry.

``fused_soft_target_loss`` checks its arguments (the rules of ``softlabel.kernels.checks``)
and runs the engine (``softlabel.kernels.engine``) on the logits: per-row loss (N,) with
d loss_i / d logits_i written in forward into one (N, K) buffer that backward scales in
place. ``fused_per_row`` is the same without the checks, for callers that have checked.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from softlabel.kernels.checks import (
    check_chunk_rows,
    check_previous,
    check_prior,
    prepare,
)
from softlabel.kernels.chunks import CHUNK_BYTES, DEFAULT_CHUNK_BYTES, default_chunk_rows
from softlabel.kernels.engine import LogitLoss, logits_per_row
from softlabel.kernels.modes import MODES as _MODES
from softlabel.kernels.references import TopKLogits, check_reference
from softlabel.kernels.spec import LossSpec

__all__ = [
    "CHUNK_BYTES",
    "DEFAULT_CHUNK_BYTES",
    "MODES",
    "FusedSoftTargetLossFunction",
    "LossSpec",
    "default_chunk_rows",
    "fused_per_row",
    "fused_soft_target_loss",
]

#: The engine's modes, by name.
MODES = tuple(_MODES)

#: The autograd function of the fused loss of logits (an alias of ``engine.LogitLoss``).
FusedSoftTargetLossFunction = LogitLoss


def fused_per_row(
    logits: Tensor, labels: Tensor | None, valid: Tensor | None, spec: LossSpec
) -> Tensor:
    """``fused_soft_target_loss`` of inputs the caller has already checked (no checks here).

    ``logits`` (N, K); ``labels`` (N,) int64 class indices in [0, K) at every row (any class
    at ignored rows; None when the mode reads no target); ``valid`` (N,) bool, False at
    ignored rows (loss and gradient 0), or None when every row counts. The tensors in ``spec``
    have one row per position and carry no gradient.
    """
    return logits_per_row(logits, labels, valid, spec)


def fused_soft_target_loss(
    logits: Tensor,
    target: Tensor | None,
    *,
    mode: str,
    prior: Tensor | None = None,
    teacher: Tensor | TopKLogits | None = None,
    previous: Tensor | None = None,
    ignore_index: int = -100,
    chunk_rows: int | None = None,
    **params: Any,
) -> Tensor:
    """Per-row soft-target loss (N,) of 2-D logits (N, K), with a fused backward.

    ``mode`` is one of ``MODES`` and ``params`` its settings (``softlabel.kernels.modes``),
    for example (CE = lse(s) - s_y, p = softmax(s); ignored rows give loss 0 and gradient 0):

    - ``"hard"``: CE.
    - ``"ls"`` (``eps``): (1 - eps) CE + eps H(u, p); u = ``prior`` (K,), row y of a
      class-conditional ``prior`` matrix (K, K), or uniform 1/K when ``prior`` is None.
    - ``"kd"`` (``temperature``, ``alpha``, ``divergence``, ``beta``, ``skew``,
      ``standardize``): (1 - alpha) CE + alpha T^2 D(p_t^T, p_s^T) against ``teacher``
      logits (N, K) or a ``TopKLogits`` reference; ``target`` may be None when alpha = 1.
    - ``"dkd"`` (``temperature``, ``tckd_weight``, ``nckd_weight``, ``ce_weight``): decoupled
      KD (Zhao et al., CVPR 2022).
    - ``"relax"`` (``alpha``): label relaxation (Lienen and Huellermeier, AAAI 2021).
    - ``"reloop"`` (``alpha``): (1 - alpha) CE + alpha max(0, q_y - p_y), ``previous`` = q as
      (N, K) probabilities or the already gathered q_y (N,).
    - ``"margin"`` (``margin``, ``penalty``), ``"confidence"`` (``margin``, ``power``),
      ``"virtual_teacher"`` (``correct_prob``, ``temperature``, ``alpha``): MbLS, AdaLabel's
      adaptive eps and Tf-KD_reg (see ``softlabel.functional``).

    ``target`` holds class indices (N,) or class probabilities (N, K). The result is float32
    for half-precision logits, otherwise the logits' dtype. 3-D inputs are flattened by the
    caller (``logits.reshape(-1, K)``, ``target.reshape(-1)``).
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    engine_mode = _MODES[mode]
    settings = engine_mode.settings(params)
    check_chunk_rows(chunk_rows)
    if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(
            f"logits must be a 2-D floating tensor (N, K) (flatten other dims), got {shape}"
        )
    spec = LossSpec(mode, settings, ignore_index=ignore_index, chunk_rows=chunk_rows)
    if target is None and engine_mode.needs_labels(spec):
        raise ValueError(
            f"target is required for mode={mode!r} unless mode='kd' with alpha=1, got target=None"
        )
    positions = prepare(logits, target, ignore_index=ignore_index, weight=None, binary=False)
    changes: dict[str, Any] = {}
    if positions.probs is not None:
        if not engine_mode.soft_target:
            raise ValueError(f"mode={mode!r} needs class indices, not probability targets")
        changes["soft_target"] = positions.probs
    if prior is not None:
        if not engine_mode.prior:
            raise ValueError(f"prior is only used by mode='ls', got mode={mode!r}")
        changes["prior"] = check_prior(prior, logits.shape[1], logits)
    if engine_mode.teacher:
        if teacher is None:
            raise ValueError(f"teacher logits are required for mode={mode!r}")
        changes["teacher"] = check_reference(
            teacher, logits, engine_mode.teacher, engine_mode.any_vocabulary
        )
    elif teacher is not None:
        raise ValueError(f"teacher is only used by modes that read one, got mode={mode!r}")
    if engine_mode.previous:
        if previous is None:
            raise ValueError(f"previous probabilities are required for mode={mode!r}")
        changes["previous"] = check_previous(previous, positions)
    elif previous is not None:
        raise ValueError(f"previous is only used by mode='reloop', got mode={mode!r}")
    spec = spec.replace(**changes)
    engine_mode.check(spec, positions.mask, logits.shape[1])
    labels = None if positions.index is None else positions.index
    return fused_per_row(logits, labels, positions.mask, spec)
