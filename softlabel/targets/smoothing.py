"""Label smoothing sources: towards the uniform distribution or a class prior."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from softlabel.functional import label_smoothing_loss
from softlabel.functional._validation import PRIOR_TOLERANCE
from softlabel.targets._base import HyperParameter, TargetSource, hyper_parameter


class UniformPrior(TargetSource):
    """``loss = (1 - eps) * CE(y, p) + eps * H(u, p)`` with u = 1/K (binary: y' = y(1-eps)+eps/2)."""

    name = "ls"
    reference = None
    smoothing = hyper_parameter()

    def __init__(self, smoothing: HyperParameter = 0.1) -> None:
        super().__init__(smoothing=smoothing)

    def _loss(self, logits: Tensor, target: Tensor, reference: None, **options: Any) -> Tensor:
        return label_smoothing_loss(logits, target, self.smoothing, **options)


def _as_vector(name: str, values: Any) -> Tensor:
    if isinstance(values, Tensor):
        vector = values.detach().to(device="cpu", dtype=torch.float64)
    elif isinstance(values, Sequence) and not isinstance(values, str):
        try:
            vector = torch.tensor([float(v) for v in values], dtype=torch.float64)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a sequence of numbers, got {values!r}") from None
    else:
        raise TypeError(f"{name} must be a 1-D tensor or a sequence of numbers, got {values!r}")
    if vector.dim() != 1 or vector.numel() < 2:
        raise ValueError(f"{name} must be a 1-D vector of length K >= 2, got {vector.tolist()}")
    if not (torch.isfinite(vector) & (vector >= 0)).all():
        raise ValueError(f"{name} must be finite and >= 0, got {vector.tolist()}")
    return vector


def _normalised(name: str, values: Any) -> Tensor:
    vector = _as_vector(name, values)
    total = vector.sum().item()
    if total <= 0:
        raise ValueError(f"{name} must have a positive sum, got {vector.tolist()}")
    return vector / total


class ClassPrior(TargetSource):
    """``loss = (1 - eps) * CE(y, p) + eps * H(prior, p)``.

    Give ``prior`` (a length-K probability vector) or ``counts`` (prior = counts / sum), not
    both. With neither, the prior must be set before the first loss, by ``set_prior`` or
    ``set_class_counts`` (the training app passes the train split's class counts).
    For binary tasks the prior has length 2: ``[P(y=0), P(y=1)]``.
    """

    name = "ls_prior"
    reference = None
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
            vector = _as_vector("prior", prior)
            if abs(vector.sum().item() - 1.0) > PRIOR_TOLERANCE:
                raise ValueError(
                    f"prior must sum to 1 (within {PRIOR_TOLERANCE}), got {vector.tolist()}; "
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
        """Set the prior from class counts or probabilities (normalised to sum to 1)."""
        self._prior = _normalised("counts_or_prior", counts_or_prior)

    def set_class_counts(self, counts: Sequence[float] | Tensor) -> None:
        """Set the prior to ``counts / counts.sum()``."""
        self._prior = _normalised("counts", counts)

    def _loss(self, logits: Tensor, target: Tensor, reference: None, **options: Any) -> Tensor:
        if self._prior is None:
            raise ValueError(
                "ClassPrior has no prior: pass prior= or counts=, or call "
                "set_class_counts(counts) / set_prior(counts_or_prior) first"
            )
        return label_smoothing_loss(logits, target, self.smoothing, prior=self._prior, **options)

    def __repr__(self) -> str:
        prior = None if self._prior is None else [round(p, 6) for p in self._prior.tolist()]
        return f"ClassPrior(smoothing={self._schedules['smoothing']!r}, prior={prior})"
