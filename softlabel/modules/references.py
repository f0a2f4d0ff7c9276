"""Reference providers: what a soft-target source needs besides the hard label.

A provider is an ``nn.Module`` called as ``provider(x, index) -> Tensor`` for one batch,
so it moves to the device with the LightningModule that holds it. Frozen models inside a
provider never train: their parameters have ``requires_grad=False``, they stay in eval
mode when the owner switches to train mode, and they run under ``torch.no_grad()``.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor, nn

__all__ = [
    "CachedTeacher",
    "FrozenModelProvider",
    "IndexedLookup",
    "LiveTeacher",
    "PreviousModelProvider",
    "ReferenceProvider",
    "StoredPredictions",
]

TASKS = ("multiclass", "binary")


class ReferenceProvider(nn.Module):
    """Base class: ``forward(x, index)`` returns the batch's reference tensor."""

    #: the reference kind it produces, matched against ``source.reference``
    kind: str = ""

    def forward(self, x: Tensor, index: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class FrozenModelProvider(ReferenceProvider):
    """Runs a frozen model on the batch inputs (eval mode, no grad, never optimised)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.model.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True) -> FrozenModelProvider:
        """Keep the frozen model in eval mode whatever ``mode`` the owner asks for."""
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        """The frozen model's raw outputs on ``x``."""
        return self.model(x).detach()


class LiveTeacher(FrozenModelProvider):
    """Teacher logits computed on the fly: ``teacher(x)``."""

    kind = "teacher_logits"

    def forward(self, x: Tensor, index: Tensor) -> Tensor:
        return self.logits(x)


class PreviousModelProvider(FrozenModelProvider):
    """The previous model's probabilities: ``softmax(f(x))``, or ``sigmoid(f(x))`` if binary."""

    kind = "previous_probs"

    def __init__(self, model: nn.Module, task: str = "multiclass") -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        super().__init__(model)
        self.task = task

    def forward(self, x: Tensor, index: Tensor) -> Tensor:
        logits = self.logits(x)
        if self.task == "binary":
            return torch.sigmoid(logits.reshape(x.shape[0]))
        return torch.softmax(logits, dim=-1)


class _IndexLookup(Protocol):
    def lookup(self, index: Tensor) -> Tensor: ...


class IndexedLookup(ReferenceProvider):
    """Base for tables: looks the batch up by dataset index in an external table, moved to ``x``'s device."""

    def __init__(self, table: Any, kind: str | None = None) -> None:
        super().__init__()
        if kind is not None:
            self.kind = kind
        if not callable(getattr(table, "lookup", None)):
            raise TypeError(
                f"expected an object with a lookup(index) method, got {type(table).__name__}"
            )
        self.table = table

    def forward(self, x: Tensor, index: Tensor) -> Tensor:
        values = self.table.lookup(index.detach().to("cpu", torch.long))
        return torch.as_tensor(values).to(device=x.device, dtype=torch.float32)


class CachedTeacher(IndexedLookup):
    """Teacher logits read from an offline cache: ``cache.lookup(index) -> (B, K)``."""

    kind = "teacher_logits"

    def __init__(self, cache: _IndexLookup) -> None:
        super().__init__(cache)

    @property
    def cache(self) -> _IndexLookup:
        return self.table


class StoredPredictions(IndexedLookup):
    """A previous model's stored probabilities: ``store.lookup(index) -> (B, K)`` or ``(B,)``.

    ``store`` is any object with ``lookup(index)`` (e.g. one version of a prediction store).
    """

    kind = "previous_probs"
