"""Fused, chunked soft-target loss: one pass over row chunks, gradient written in forward.

``fused_soft_target_loss`` returns the per-row loss (N,); the caller applies the reduction
and any per-sample weights. Forward walks over chunks of ``chunk_rows`` rows and writes
d loss_i / d logits_i into one (N, K) buffer; backward scales that buffer in place by
``grad_output[:, None]`` and hands it to autograd. Apart from that buffer only (chunk_rows, K)
temporaries exist. Half-precision inputs are computed in float32 (loss in float32, gradient
in the logits' dtype); float64 inputs are computed in float64.

Backward scales the buffer in place unless the graph is retained (``retain_graph=True``,
``gradcheck``), where it returns a scaled copy and keeps the buffer for the next backward.
Under ``create_graph=True`` (double backward: gradient penalties, Hessian-vector products)
the buffer is a constant with no graph, so backward instead recomputes the loss with the
differentiable formula of ``_reference.per_row_loss`` and returns its gradient with a graph:
second-order gradients are exact, at the plain formula's speed and memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from softlabel.kernels import _chunk_math
from softlabel.kernels._reference import per_row_loss
from softlabel.kernels._validate import validate_inputs

MODES = ("hard", "ls", "kd", "reloop", "dkd", "relax")

#: Bytes of all (chunk_rows, K) arrays one chunk touches (inputs and work buffers together),
#: per device type. On CPU a chunk's arrays should stay in the last-level cache between the
#: dozen row passes a chunk makes: 32 MiB gives 52 rows for KD and 131 rows for CE/LS/ReLoop
#: at K = 32000 fp32, about 15% faster for KD than 8x larger chunks (docs/performance.md,
#: ``benchmarks/chunks.py``). On GPUs every op is a kernel launch, so chunks are large there.
CHUNK_BYTES = {"cpu": 32 << 20, "cuda": 256 << 20}

#: Budget for device types not listed in ``CHUNK_BYTES``.
DEFAULT_CHUNK_BYTES = 256 << 20

#: (chunk_rows, K) arrays a chunk touches per mode: logits and gradient, plus teacher and two
#: work buffers for distillation. ``_arrays(spec)`` refines this per call (one more work
#: buffer for a prior matrix or the JSD).
_ARRAYS_PER_MODE = {"hard": 2, "ls": 2, "reloop": 2, "kd": 5, "dkd": 5, "relax": 2}


@dataclass(frozen=True)
class LossSpec:
    """Mode and hyper-parameters of one call (tensors already checked and detached)."""

    mode: str
    eps: float = 0.0
    prior: Tensor | None = None
    teacher: Tensor | None = None
    temperature: float = 1.0
    alpha: float = 0.0
    previous: Tensor | None = None
    ignore_index: int = -100
    chunk_rows: int | None = None
    soft_target: Tensor | None = None  # (N, K) class probabilities in place of labels
    divergence: str = "forward_kl"  # kd: forward_kl | reverse_kl | jsd | tvd
    beta: float = 0.5  # kd with divergence="jsd": M = beta p_t + (1 - beta) p_s
    standardize: bool = False  # kd: z-score student and teacher logits per row
    tckd_weight: float = 1.0  # dkd: alpha, the weight of TCKD
    nckd_weight: float = 8.0  # dkd: beta, the weight of NCKD
    ce_weight: float = 1.0  # dkd: the weight of the hard CE


#: Divergences of mode "kd" between p_t^T = softmax(t/T) and p_s^T = softmax(s/T).
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "tvd")


def effective_divergence(spec: LossSpec) -> str:
    """The divergence computed: the JSD at beta = 0 is the forward KL, at beta = 1 the
    reverse KL (as TRL's GKD computes them)."""
    if spec.divergence == "jsd" and spec.beta in (0.0, 1.0):
        return "forward_kl" if spec.beta == 0.0 else "reverse_kl"
    return spec.divergence


def _plain_kd(spec: LossSpec) -> bool:
    """True when mode "kd" runs the forward-KL kernel ``kd_chunk`` (no standardization)."""
    return effective_divergence(spec) == "forward_kl" and not spec.standardize


#: Largest allowed distance of a probability target's row sum from 1.
TARGET_SUM_TOLERANCE = 1e-3


def default_chunk_rows(
    num_classes: int,
    dtype: torch.dtype = torch.float32,
    mode: str = "ls",
    device: torch.device | str = "cpu",
    arrays: int | None = None,
) -> int:
    """Rows per chunk so the chunk's arrays hold about ``CHUNK_BYTES[device type]`` (>= 1 row).

    ``arrays``: the (chunk_rows, K) arrays one chunk touches (default: the mode's count).
    """
    itemsize = 8 if dtype == torch.float64 else 4
    budget = CHUNK_BYTES.get(torch.device(device).type, DEFAULT_CHUNK_BYTES)
    arrays = _ARRAYS_PER_MODE[mode] if arrays is None else arrays
    return max(1, budget // (arrays * num_classes * itemsize))


def _work_buffers(spec: LossSpec) -> int:
    """(chunk_rows, K) work buffers one chunk of ``spec`` needs besides the gradient slice."""
    if spec.mode == "kd":
        return 3 if effective_divergence(spec) == "jsd" and spec.alpha > 0.0 else 2
    if spec.mode == "dkd":
        return 2
    if spec.mode == "ls" and spec.prior is not None and spec.prior.dim() == 2:
        return 1
    return 0


def _arrays(spec: LossSpec) -> int:
    """(chunk_rows, K) arrays one chunk touches: logits (and teacher), gradient, work buffers."""
    inputs = 2 if spec.teacher is not None else 1
    return inputs + 1 + _work_buffers(spec)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def grad_scale(spec: LossSpec) -> float:
    """c with d loss_i / d s_i = c * (what ``_forward`` writes into the gradient buffer)."""
    if spec.mode == "kd" and spec.alpha > 0.0:
        if _plain_kd(spec):
            return _chunk_math.kd_grad_scale(spec.temperature, spec.alpha)
        return _chunk_math.divergence_grad_scale(
            spec.temperature, spec.alpha, effective_divergence(spec), spec.beta, spec.standardize
        )
    return 1.0


def _forward(
    logits: Tensor, labels: Tensor | None, valid: Tensor | None, spec: LossSpec, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """Per-row loss (N,) and, when ``need_grad``, the gradient (N, K) in the logits' dtype,
    divided by ``grad_scale(spec)``."""
    n, k = logits.shape
    cd = _compute_dtype(logits.dtype)
    loss = torch.zeros(n, dtype=cd, device=logits.device)
    grad = torch.empty_like(logits, memory_format=torch.contiguous_format) if need_grad else None
    if n == 0:
        return loss, grad
    rows = spec.chunk_rows or default_chunk_rows(k, cd, spec.mode, logits.device, _arrays(spec))
    rows = min(n, rows)
    grad_in_place = grad is not None and grad.dtype == cd
    work_g = None if grad_in_place else logits.new_empty((rows, k), dtype=cd)
    work = [logits.new_empty((rows, k), dtype=cd) for _ in range(_work_buffers(spec))]
    work_a, work_b, work_c = (work + [None, None, None])[:3]
    prior_eps = prior_sum = None
    if spec.mode == "ls" and spec.prior is not None:
        if spec.prior.dim() == 1:
            prior_eps = spec.prior.to(cd) * spec.eps
            prior_sum = float(spec.prior.to(cd).sum())
        else:  # a (K, K) matrix is used as it is (no scaled copy of K^2 values)
            prior_eps = spec.prior.to(cd)
    if labels is not None:
        labels = labels.unsqueeze(1)
    if valid is not None and bool(valid.all()):
        valid = None
    probs = spec.soft_target
    if probs is not None:  # row minima and sums, checked after the loop (O(N))
        q_min = loss.new_empty(n)
        q_sum = loss.new_empty(n)
    for a in range(0, n, rows):
        b = min(n, a + rows)
        s = logits[a:b]
        g = grad[a:b] if grad_in_place else work_g[: b - a]
        y = None if labels is None else labels[a:b]
        q = None
        if probs is not None:
            q = probs[a:b]
            torch.amin(q, dim=1, out=q_min[a:b])
            torch.sum(q, dim=1, dtype=cd, out=q_sum[a:b])
        loss[a:b] = _chunk_loss(
            s, y, q, g, spec, a, b, work_a, work_b, prior_eps, prior_sum, work_c=work_c
        )
        if grad is not None and not grad_in_place:
            grad[a:b].copy_(g)
    if probs is not None:
        _check_probability_rows(q_min, q_sum)
    if valid is not None:  # ignored rows: loss 0, gradient 0 (also over NaN/inf logits)
        loss.masked_fill_(~valid, 0.0)
        if grad is not None:
            grad.index_fill_(0, (~valid).nonzero().view(-1), 0.0)
    return loss, grad


def _check_probability_rows(q_min: Tensor, q_sum: Tensor) -> None:
    """Probability targets: every row >= 0 and summing to 1 (NaN and inf fail too)."""
    ok = (q_min >= 0) & ((q_sum - 1.0).abs() <= TARGET_SUM_TOLERANCE)
    if not bool(ok.all()):
        row = int((~ok).nonzero()[0])
        raise ValueError(
            "target must hold class probabilities (rows >= 0 summing to 1 within "
            f"{TARGET_SUM_TOLERANCE:g}), got a row (position {row} of the flattened positions) "
            f"with minimum {q_min[row].item():.6g} and sum {q_sum[row].item():.6g}"
        )


def _chunk_loss(
    s, y, q, g, spec, a, b, work_a, work_b, prior_eps, prior_sum, teacher_rows=None, *, work_c=None
) -> Tensor:
    """Dispatch one chunk to its mode's math in ``_chunk_math`` (``q``: probability targets).

    ``teacher_rows``: the chunk's teacher logits when the caller makes them chunk by chunk
    (the linear-head loss); None reads ``spec.teacher[a:b]``. ``work_a``, ``work_b`` (and
    ``work_c``): (>= b - a, K) work buffers in the compute dtype, ``_work_buffers(spec)`` of
    them; a missing one is allocated for this chunk.
    """
    rows = b - a
    t = spec.teacher[a:b] if teacher_rows is None and spec.teacher is not None else teacher_rows
    if spec.mode == "hard" or (spec.mode == "kd" and spec.alpha == 0.0):
        return _chunk_math.ce_ls_chunk(s, y, g, 0.0, None, 1.0, q)
    if spec.mode == "ls":
        if prior_eps is not None and prior_eps.dim() == 2:  # class-conditional prior matrix
            return _chunk_math.ce_prior_matrix_chunk(
                s, y, g, spec.eps, prior_eps, _work(work_a, g), q
            )
        prior_sum = 1.0 if prior_sum is None else prior_sum
        return _chunk_math.ce_ls_chunk(s, y, g, spec.eps, prior_eps, prior_sum, q)
    if spec.mode == "relax":
        return _chunk_math.relax_chunk(s, y, g, spec.alpha)
    if spec.mode == "reloop":
        prev = spec.previous[a:b]
        if q is not None:
            return _chunk_math.reloop_soft_target_chunk(s, q, g, spec.alpha, prev)
        prev_y = prev if prev.dim() == 1 else prev.gather(1, y).view(-1)
        return _chunk_math.reloop_chunk(s, y, g, spec.alpha, prev_y.to(g.dtype))
    if spec.mode == "dkd":
        return _chunk_math.dkd_chunk(
            s,
            y,
            g,
            t,
            _work(work_a, g),
            _work(work_b, g),
            spec.temperature,
            spec.tckd_weight,
            spec.nckd_weight,
            spec.ce_weight,
        )
    if _plain_kd(spec):
        return _chunk_math.kd_chunk(
            s, y, g, t, work_a[:rows], work_b[:rows], spec.temperature, spec.alpha, q
        )
    divergence = effective_divergence(spec)
    return _chunk_math.divergence_chunk(
        s,
        y,
        g,
        t,
        _work(work_a, g),
        _work(work_b, g),
        _work(work_c, g) if divergence == "jsd" else None,
        spec.temperature,
        spec.alpha,
        divergence,
        spec.beta,
        spec.standardize,
        q,
    )


def _work(buffer: Tensor | None, like: Tensor) -> Tensor:
    """``buffer`` cut to the chunk's rows, or a new one of ``like``'s shape when None."""
    return torch.empty_like(like) if buffer is None else buffer[: like.shape[0]]


class FusedSoftTargetLossFunction(torch.autograd.Function):
    """Autograd wrapper: forward computes loss and gradient, backward scales the gradient."""

    @staticmethod
    def forward(
        ctx, logits: Tensor, labels: Tensor | None, valid: Tensor | None, spec: LossSpec
    ) -> Tensor:
        loss, grad = _forward(logits, labels, valid, spec, need_grad=True)
        ctx.grad = grad
        ctx.grad_scale = grad_scale(spec)
        ctx.inputs = (labels, valid, spec)
        ctx.save_for_backward(logits)  # a reference, read only by double backward
        out_dtype = torch.float32 if logits.dtype in (torch.float16, torch.bfloat16) else None
        return loss if out_dtype is None else loss.to(out_dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None, None, None]:
        if torch.is_grad_enabled():  # create_graph=True: a gradient with a graph is wanted
            (logits,) = ctx.saved_tensors
            per_row = per_row_loss(logits, *ctx.inputs)
            (grad,) = torch.autograd.grad(
                per_row, logits, grad_output.to(per_row.dtype), create_graph=True
            )
            return grad, None, None, None
        grad = ctx.grad
        row_scale = grad_output.unsqueeze(1)
        if ctx.grad_scale != 1.0:
            row_scale = row_scale * ctx.grad_scale
        if _graph_is_kept():  # the graph may be run again: keep the buffer intact
            return grad * row_scale, None, None, None
        ctx.grad = None  # drop our reference so autograd may reuse the buffer as .grad
        return grad.mul_(row_scale), None, None, None


def _graph_is_kept() -> bool:
    """True when this backward runs with ``retain_graph`` (or when torch cannot tell)."""
    keep_graph = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return True if keep_graph is None else bool(keep_graph())


def fused_soft_target_loss(
    logits: Tensor,
    target: Tensor | None,
    *,
    mode: str,
    eps: float = 0.0,
    prior: Tensor | None = None,
    teacher: Tensor | None = None,
    temperature: float = 1.0,
    alpha: float = 0.0,
    previous: Tensor | None = None,
    ignore_index: int = -100,
    chunk_rows: int | None = None,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    standardize: bool = False,
    tckd_weight: float = 1.0,
    nckd_weight: float = 8.0,
    ce_weight: float = 1.0,
) -> Tensor:
    """Per-row soft-target loss (N,) of 2-D logits (N, K), with a fused backward.

    Modes (CE = lse(s) - s_y, p = softmax(s); ignored rows give loss 0 and gradient 0):

    - ``"hard"``: CE.
    - ``"ls"``: (1 - eps) CE + eps H(u, p), H(u, p) = -sum_k u_k log p_k; u = ``prior`` (K,),
      row y of a class-conditional ``prior`` matrix (K, K), or uniform 1/K when ``prior`` is
      None.
    - ``"kd"``: (1 - alpha) CE + alpha T^2 D(p_t^T, p_s^T), p_t^T = softmax(teacher/T),
      p_s^T = softmax(s/T); ``target`` may be None when alpha = 1. The teacher gets no
      gradient. D by ``divergence``: ``"forward_kl"`` KL(p_t^T || p_s^T), ``"reverse_kl"``
      KL(p_s^T || p_t^T), ``"jsd"`` beta KL(p_t^T || M) + (1 - beta) KL(p_s^T || M) with
      M = beta p_t^T + (1 - beta) p_s^T (beta = 0: forward KL, beta = 1: reverse KL), ``"tvd"``
      1/2 sum_k |p_t^T - p_s^T|. ``standardize``: both logits z-scored per row,
      (x - mean) / (std + 1e-7), before dividing by T (the CE stays on the raw logits).
    - ``"dkd"``: ``ce_weight`` CE + T^2 (``tckd_weight`` TCKD + ``nckd_weight`` NCKD), decoupled
      KD (Zhao et al., CVPR 2022): TCKD = KL(b_t || b_s) of the binary (target, rest) masses
      of p_t^T and p_s^T, NCKD = KL of p_t^T and p_s^T renormalised over the non-target
      classes. Needs ``target``.
    - ``"relax"``: label relaxation (Lienen and Huellermeier, AAAI 2021), KL(p_r || p) where
      p_y < 1 - alpha, else 0; p_r_y = 1 - alpha, p_r_k = alpha p_k / (1 - p_y), no gradient
      through p_r.
    - ``"reloop"``: (1 - alpha) CE + alpha max(0, q_y - p_y), ``previous`` = q as (N, K)
      probabilities or the already gathered q_y (N,).

    The result is float32 for half-precision logits, otherwise the logits' dtype. 3-D
    inputs are flattened by the caller (``logits.reshape(-1, K)``, ``target.reshape(-1)``).
    """
    spec = validate_inputs(
        LossSpec(
            mode=mode,
            eps=eps,
            prior=prior,
            teacher=teacher,
            temperature=temperature,
            alpha=alpha,
            previous=previous,
            ignore_index=ignore_index,
            chunk_rows=chunk_rows,
            divergence=divergence,
            beta=beta,
            standardize=standardize,
            tckd_weight=tckd_weight,
            nckd_weight=nckd_weight,
            ce_weight=ce_weight,
        ),
        logits,
        target,
        modes=MODES,
    )
    labels = valid = None
    if target is not None:
        valid = target != ignore_index
        labels = target.long().masked_fill(~valid, 0)
    return fused_per_row(logits, labels, valid, spec)


def fused_per_row(
    logits: Tensor, labels: Tensor | None, valid: Tensor | None, spec: LossSpec
) -> Tensor:
    """``fused_soft_target_loss`` of inputs the caller has already validated (no checks here).

    ``logits`` (N, K); ``labels`` (N,) int64 class indices in [0, K) at every row (any class
    at ignored rows; None only for kd with alpha = 1); ``valid`` (N,) bool, False at ignored
    rows (loss and gradient 0), or None when every row counts. The tensors in ``spec`` have
    the shapes ``validate_inputs`` allows and carry no gradient.
    """
    logits = logits.contiguous()
    if torch.is_grad_enabled() and logits.requires_grad:
        return FusedSoftTargetLossFunction.apply(logits, labels, valid, spec)
    loss, _ = _forward(logits.detach(), labels, valid, spec, need_grad=False)
    return loss.float() if logits.dtype in (torch.float16, torch.bfloat16) else loss
