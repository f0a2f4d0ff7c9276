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

from softlabel.functional.topk import TopKLogits

__all__ = [
    "CachedTeacher",
    "FrozenModelProvider",
    "IndexedLookup",
    "LiveTeacher",
    "PreviousModelProvider",
    "ReferenceProvider",
    "StoredPredictions",
    "model_device",
]

TASKS = ("multiclass", "binary")


def model_device(model: nn.Module) -> torch.device | None:
    """The one device holding all of ``model``'s parameters and buffers; None when it has
    none, or spans several devices (then placement is the model's own business)."""
    devices = {t.device for t in model.parameters()} | {t.device for t in model.buffers()}
    return devices.pop() if len(devices) == 1 else None


class ReferenceProvider(nn.Module):
    """Base class: ``forward(x, index)`` returns the batch's reference tensor."""

    #: the reference kind it produces, matched against ``source.reference``
    kind: str = ""
    #: what the provider is called in messages ("teacher", "previous model")
    role: str = "reference"

    @property
    def device(self) -> torch.device | None:
        """The device of the provider's own model, or None (tables follow the batch)."""
        return None

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

    @property
    def device(self) -> torch.device | None:
        return model_device(self.model)

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        """The frozen model's raw outputs on ``x``; ValueError if the model sits on another
        device than the batch. Floating inputs are cast to the model's floating dtype (a
        teacher held in bfloat16) and its outputs back to the inputs' dtype."""
        first = next(iter(self.model.parameters()), None)
        device = None if first is not None and first.device == x.device else self.device
        if device is not None and device != x.device:
            raise ValueError(
                f"the {self.role} model ({type(self.model).__name__}) is on {device} but the "
                f"batch is on {x.device}: keep it on the student's device (a provider inside "
                "SoftLabelModule moves with it; do not move the model inside it separately)"
            )
        if (
            first is not None
            and first.is_floating_point()
            and x.is_floating_point()
            and x.dtype != first.dtype
        ):
            return self.model(x.to(first.dtype)).detach().to(x.dtype)
        return self.model(x).detach()


class LiveTeacher(FrozenModelProvider):
    """Teacher logits computed on the fly: ``teacher(x)``."""

    kind = "teacher_logits"
    role = "teacher"

    def forward(self, x: Tensor, index: Tensor) -> Tensor:
        return self.logits(x)


class PreviousModelProvider(FrozenModelProvider):
    """The previous model's probabilities: ``softmax(f(x))``, or ``sigmoid(f(x))`` if binary."""

    kind = "previous_probs"
    role = "previous model"

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
    """Teacher logits read from an offline cache: ``cache.lookup(index) -> (B, K)``, or a
    top-k ``TopKLogits`` (a top-k cache opened with ``tail="bucket"``), moved to the batch's
    device as it is (the ids stay int64, the values float32)."""

    kind = "teacher_logits"

    def __init__(self, cache: _IndexLookup) -> None:
        super().__init__(cache)

    def forward(self, x: Tensor, index: Tensor) -> Tensor:
        values = self.table.lookup(index.detach().to("cpu", torch.long))
        if isinstance(values, TopKLogits):
            return values.to(device=x.device, dtype=torch.float32)  # type: ignore[return-value]
        return torch.as_tensor(values).to(device=x.device, dtype=torch.float32)

    @property
    def cache(self) -> _IndexLookup:
        return self.table


class StoredPredictions(IndexedLookup):
    """A previous model's stored probabilities: ``store.lookup(index) -> (B, K)`` or ``(B,)``.

    ``store`` is any object with ``lookup(index)`` (e.g. one version of a prediction store).
    """

    kind = "previous_probs"
