"""Label smoothing sources: towards the uniform distribution or a class prior."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from softlabel.kernels.checks import PROBABILITY_TOLERANCE
from softlabel.targets._base import HyperParameter, TargetSource, hyper_parameter


class UniformPrior(TargetSource):
    """``loss = (1 - eps) * CE(y, p) + eps * H(u, p)`` with u = 1/K (binary: y' = y(1-eps)+eps/2);
    label smoothing (Szegedy et al., CVPR 2016), mode ``ls``."""

    name = "ls"
    reference = None
    mode = "ls"
    smoothing = hyper_parameter()

    def __init__(self, smoothing: HyperParameter = 0.1) -> None:
        super().__init__(smoothing=smoothing)

    def _spec_params(self) -> dict[str, Any]:
        return {"eps": self.smoothing}


def _as_tensor(name: str, values: Any) -> Tensor:
    if isinstance(values, Tensor):
        return values.detach().to(device="cpu", dtype=torch.float64)
    if isinstance(values, Sequence) and not isinstance(values, str):
        try:
            return torch.tensor(values, dtype=torch.float64)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a sequence of numbers, got {values!r}") from None
    raise TypeError(f"{name} must be a 1-D tensor or a sequence of numbers, got {values!r}")


def _as_vector(name: str, values: Any, matrix: bool = False) -> Tensor:
    """A finite, non-negative vector (K,) with K >= 2, or with ``matrix`` also a (K, K) one."""
    vector = _as_tensor(name, values)
    square = matrix and vector.dim() == 2 and vector.shape[0] == vector.shape[1]
    if not (vector.dim() == 1 or square) or vector.shape[-1] < 2:
        allowed = "a 1-D vector of length K >= 2" + (" or a (K, K) matrix" if matrix else "")
        raise ValueError(f"{name} must be {allowed}, got {vector.tolist()}")
    if not (torch.isfinite(vector) & (vector >= 0)).all():
        raise ValueError(f"{name} must be finite and >= 0, got {vector.tolist()}")
    return vector


def _normalised(name: str, values: Any, matrix: bool = False) -> Tensor:
    """``values / sum``; a (K, K) matrix row by row."""
    vector = _as_vector(name, values, matrix)
    total = vector.sum(dim=-1, keepdim=True)
    if bool((total <= 0).any()):
        where = (
            "" if vector.dim() == 1 else f" in every row (row {int((total <= 0).nonzero()[0, 0])})"
        )
        raise ValueError(f"{name} must have a positive sum{where}, got {vector.tolist()}")
    return vector / total


class ClassPrior(TargetSource):
    """``loss = (1 - eps) * CE(y, p) + eps * H(prior, p)``.

    Give ``prior`` (a length-K probability vector) or ``counts`` (prior = counts / sum), not
    both. With neither, the prior must be set before the first loss, by ``set_prior`` or
    ``set_class_counts`` (the training app passes the train split's class counts).
    For binary tasks the prior has length 2: ``[P(y=0), P(y=1)]``. ``prior`` may also be a
    class-conditional (K, K) matrix M, every row on the simplex:
    ``(1 - eps) * CE(y, p) + eps * H(M[y], p)``.
    """

    name = "ls_prior"
    reference = None
    mode = "ls"
    smoothing = hyper_parameter()

    def __init__(
        self,
        smoothing: HyperParameter = 0.1,
        prior: Sequence[float] | Tensor | None = None,
        counts: Sequence[float] | Tensor | None = None,
    ) -> None:
        super().__init__(smoothing=smoothing)
        if prior is not None and counts is not None:
            raise ValueError(
                "ClassPrior takes prior or counts, not both: got "
                f"prior={_as_vector('prior', prior).tolist()} and counts="
                f"{_as_vector('counts', counts).tolist()}"
            )
        self._prior: Tensor | None = None
        if prior is not None:
            vector = _as_vector("prior", prior, matrix=True)
            sums = vector.sum(dim=-1).reshape(-1)
            if bool(((sums - 1.0).abs() > PROBABILITY_TOLERANCE).any()):
                what = "prior must sum to 1" if vector.dim() == 1 else "prior rows must sum to 1"
                raise ValueError(
                    f"{what} (within {PROBABILITY_TOLERANCE}), got {vector.tolist()}; "
                    "pass counts= for unnormalised class counts"
                )
            self._prior = vector
        elif counts is not None:
            self.set_class_counts(counts)

    @property
    def prior(self) -> Tensor | None:
        """The prior in force (float64, CPU), or None when not set yet."""
        return None if self._prior is None else self._prior.clone()

    @property
    def has_prior(self) -> bool:
        return self._prior is not None

    def set_prior(self, counts_or_prior: Sequence[float] | Tensor) -> None:
        """Set the prior from class counts or probabilities (normalised to sum to 1), or from
        a (K, K) matrix of them (each row normalised: the class-conditional prior)."""
        self._prior = _normalised("counts_or_prior", counts_or_prior, matrix=True)

    def set_class_counts(self, counts: Sequence[float] | Tensor) -> None:
        """Set the prior to ``counts / counts.sum()``."""
        self._prior = _normalised("counts", counts)

    def _spec_params(self) -> dict[str, Any]:
        return {"eps": self.smoothing}

    def _spec_prior(self) -> Tensor:
        if self._prior is None:
            raise ValueError(
                "ClassPrior has no prior: pass prior= or counts=, or call "
                "set_class_counts(counts) / set_prior(counts_or_prior) first"
            )
        return self._prior

    def __repr__(self) -> str:
        prior: object = None
        if self._prior is not None and self._prior.dim() == 2:
            prior = f"<{self._prior.shape[0]}x{self._prior.shape[1]} class-conditional matrix>"
        elif self._prior is not None:
            prior = [round(p, 6) for p in self._prior.tolist()]
        return f"ClassPrior(smoothing={self._schedules['smoothing']!r}, prior={prior})"
