"""What every layer shares: the loss spec, the divergence names and the compute dtype.

The bottom of the package: nothing here imports from softlabel.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

#: Divergences D(p_t^T, p_s^T) of the distillation modes (``softlabel.kernels.divergences``).
DIVERGENCES = (
    "forward_kl",
    "reverse_kl",
    "jsd",
    "tvd",
    "skew_forward_kl",
    "skew_reverse_kl",
)


def compute_dtype(dtype: torch.dtype | Tensor) -> torch.dtype:
    """float64 stays float64; every other floating dtype (fp16, bf16, fp32) computes in fp32."""
    if isinstance(dtype, Tensor):
        dtype = dtype.dtype
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class LossSpec:
    """One call of the engine: the mode, its hyper-parameters and the per-row tensors.

    ``params`` holds the mode's hyper-parameters (plain numbers and flags, already checked),
    readable as attributes (``spec.temperature``). The tensors have one row per position
    (``N``): ``teacher`` the teacher reference (dense ``(N, K)`` logits, a
    ``softlabel.kernels.references.LinearHead`` or a ``TopKLogits``), ``previous`` the previous
    model's probabilities ``(N, K)`` or gathered ``(N,)``, ``soft_target`` probability targets
    ``(N, K)`` in place of class indices, ``prior`` a prior vector ``(K,)`` or matrix
    ``(K, K)``; none of them carries a gradient.
    """

    mode: str
    params: Mapping[str, Any] = field(default_factory=dict)
    teacher: Any = None
    previous: Tensor | None = None
    prior: Tensor | None = None
    soft_target: Tensor | None = None
    ignore_index: int = -100
    chunk_rows: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    def __getattr__(self, name: str) -> Any:
        params = self.__dict__.get("params")
        if params is not None and name in params:
            return params[name]
        raise AttributeError(f"LossSpec of mode {self.__dict__.get('mode')!r} has no {name!r}")

    def __reduce__(self):  # MappingProxyType does not pickle: rebuild from a plain dict
        return (_rebuild, (self.mode, dict(self.params), self._tensors()))

    def _tensors(self) -> dict[str, Any]:
        names = ("teacher", "previous", "prior", "soft_target", "ignore_index", "chunk_rows")
        return {name: getattr(self, name) for name in names}

    def replace(self, **changes: Any) -> LossSpec:
        """A copy with tensor fields (teacher, previous, prior, soft_target, ...) replaced."""
        fields = {**self._tensors(), **changes}
        return LossSpec(self.mode, dict(self.params), **fields)


def _rebuild(mode: str, params: dict[str, Any], tensors: dict[str, Any]) -> LossSpec:
    return LossSpec(mode, params, **tensors)
