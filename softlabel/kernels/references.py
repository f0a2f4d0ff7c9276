"""What the engine reads rows from: logits, a linear head, or a top-k teacher reference.

- A dense tensor ``(N, K)``: rows are slices.
- ``LinearHead(hidden, weight, bias)``: logits ``hidden @ weight.T + bias`` made chunk by
  chunk into a buffer (the student's head in the linear-head loss, or a live teacher's).
- ``TopKLogits(index, logprob, tail)``: a sparse teacher, its k most probable ids, their
  log-probabilities and the log of the remaining mass (an offline top-k cache).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from softlabel.kernels.checks import (
    check_head,
    check_logits,
    check_teacher,
    check_teacher_positions,
    check_topk,
)
from softlabel.kernels.spec import compute_dtype

#: rows of the logits per chunk in :meth:`TopKLogits.from_logits` (bounds the float32
#: log-softmax buffer at about 64 MiB for V = 128k)
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

    def rows(self, a: int, b: int) -> TopKLogits:
        """Rows ``a:b`` of a flattened reference (index and logprob (N, k), tail (N,))."""
        return TopKLogits(self.index[a:b], self.logprob[a:b], self.tail[a:b])

    def flatten(self) -> TopKLogits:
        """The reference with its positions flattened: (N, k), (N, k), (N,)."""
        k = self.index.shape[-1]
        return TopKLogits(
            self.index.reshape(-1, k), self.logprob.reshape(-1, k), self.tail.reshape(-1)
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


@dataclass(frozen=True)
class LinearHead:
    """A linear head's inputs: logits = ``hidden @ weight.T + bias``, made chunk by chunk.

    ``hidden`` (N, H), ``weight`` (V, H), ``bias`` (V,) or None, one dtype and device.
    """

    hidden: Tensor
    weight: Tensor
    bias: Tensor | None = None

    def logits_into(self, a: int, b: int, out: Tensor) -> Tensor:
        """Write rows a:b of the logits into ``out`` (b - a, V) and return it."""
        if self.bias is None:
            return torch.mm(self.hidden[a:b], self.weight.t(), out=out)
        return torch.addmm(self.bias, self.hidden[a:b], self.weight.t(), out=out)

    def logits(self) -> Tensor:
        """All (N, V) logits (double backward and error messages only)."""
        return F.linear(self.hidden, self.weight, self.bias)

    def detached(self) -> LinearHead:
        bias = None if self.bias is None else self.bias.detach()
        return LinearHead(self.hidden.detach(), self.weight.detach(), bias)


def reference_kind(reference: Any) -> str | None:
    """``"logits"`` (a dense tensor), ``"head"`` (a ``LinearHead``), ``"topk"``
    (``TopKLogits``) or None."""
    if reference is None:
        return None
    if isinstance(reference, TopKLogits):
        return "topk"
    if isinstance(reference, LinearHead):
        return "head"
    return "logits"


def materialized(reference: Any) -> Any:
    """A reference the differentiable formulas can read: a head's logits are made in full."""
    return reference.logits() if isinstance(reference, LinearHead) else reference


def reference_rows(reference: Any, a: int, b: int, buffer: Tensor | None) -> Any:
    """Rows ``a:b`` of a teacher reference for one chunk: a slice of dense logits or of a
    top-k reference, or a head's logits made in ``buffer``."""
    if reference is None:
        return None
    if isinstance(reference, LinearHead):
        return reference.logits_into(a, b, buffer[: b - a])
    if isinstance(reference, TopKLogits):
        return reference.rows(a, b)
    return reference[a:b]


def sub_rows(rows: Any, i: int, j: int) -> Any:
    """Rows ``i:j`` of a chunk's reference rows (a tensor or a ``TopKLogits``)."""
    if rows is None:
        return None
    if isinstance(rows, TopKLogits):
        return rows.rows(i, j)
    return rows[i:j]


def check_reference(
    reference: Any, logits: Tensor, kinds: frozenset[str], any_vocabulary: bool = False
) -> Any:
    """A teacher reference for ``logits`` (..., K) (a stand-in of that shape for the linear
    head), checked by the rules of ``softlabel.kernels.checks`` for its kind, which must be
    one of ``kinds``: dense teacher logits of the logits' shape, a ``LinearHead`` over the
    same positions and vocabulary, or a ``TopKLogits``; with ``any_vocabulary`` the
    teacher's vocabulary may differ from the student's (a teacher with another tokenizer).
    Returned detached."""
    kind = reference_kind(reference)
    if kind == "topk" and "logits" in kinds and "topk" not in kinds:
        raise TypeError(
            "teacher_logits must be a torch.Tensor, got TopKLogits: this loss needs the "
            "teacher's logits over every class, not a top-k reference"
        )
    if kind not in kinds:
        names = {
            "logits": "dense teacher logits",
            "head": "a teacher head",
            "topk": "a top-k TopKLogits",
        }
        allowed = " or ".join(names[k] for k in sorted(kinds)) or "no teacher"
        raise ValueError(f"this loss reads {allowed} as its teacher, got {names.get(kind, kind)}")
    lead, vocab = tuple(logits.shape[:-1]), logits.shape[-1]
    if kind == "topk":
        teacher_vocab = None if any_vocabulary else vocab
        return TopKLogits(*check_topk(*reference, lead, teacher_vocab, logits.device))
    if kind == "head":
        hidden, weight, bias = check_head(
            "teacher_", reference.hidden, reference.weight, reference.bias, torch.Size(lead)
        )
        if weight.shape[0] != vocab and not any_vocabulary:
            raise ValueError(
                f"teacher_weight has {weight.shape[0]} classes (rows), weight has {vocab}: the "
                "teacher's head must have the student's vocabulary size"
            )
        if hidden.device != logits.device:
            raise ValueError(
                f"teacher_hidden is on {hidden.device} but the student on {logits.device}"
            )
        return LinearHead(hidden, weight, bias).detached()
    if any_vocabulary:
        return check_teacher_positions(reference, logits)
    return check_teacher(reference, logits)
