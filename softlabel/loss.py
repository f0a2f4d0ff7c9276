"""``SoftTargetLoss``: an ``nn.Module`` around a target source."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from softlabel.functional._validation import check_reduction
from softlabel.targets import Hard, TargetSource, Teacher, TopKLogits


class SoftTargetLoss(nn.Module):
    """``SoftTargetLoss(source)(logits, target, reference=None)``.

    Gives the same values and gradients as the source's functional form. ``reference`` is
    the teacher's logits (``Teacher``; also a top-k ``TopKLogits``) or the previous model's
    probabilities (``PreviousModel``). ``weight`` (per class) is a buffer, so it follows ``.to(device)``.
    ``target`` holds class indices ``(...)`` or class probabilities ``(..., K)``;
    ``binary=True`` makes it one 0/1 target per logit (binary or multi-label).
    """

    weight: Tensor | None

    def __init__(
        self,
        source: TargetSource | None = None,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
        weight: Tensor | Sequence[float] | None = None,
        binary: bool | None = None,
    ) -> None:
        super().__init__()
        if source is None:
            source = Hard()
        if not isinstance(source, TargetSource):
            raise TypeError(
                "source must be a softlabel.targets source (Hard, UniformPrior, ClassPrior, "
                f"Teacher, PreviousModel) or None, got {type(source).__name__}"
            )
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
        self.source = source
        self.ignore_index = ignore_index
        self.reduction = check_reduction(reduction)
        if binary is not None and not isinstance(binary, bool):
            raise TypeError(f"binary must be True, False or None, got {binary!r}")
        self.binary = binary
        if weight is not None:
            weight = torch.as_tensor(weight)
            if not weight.is_floating_point():
                weight = weight.float()
            if weight.dim() != 1:
                raise ValueError(
                    f"weight must be a 1-D per-class tensor, got shape {tuple(weight.shape)}"
                )
        self.register_buffer("weight", weight)

    @property
    def reference(self) -> str | None:
        """What ``forward`` needs as ``reference``: None, "teacher_logits" or "previous_probs"."""
        return self.source.reference

    @property
    def name(self) -> str:
        return self.source.name

    def set_progress(self, progress: float) -> None:
        """Forward training progress in [0, 1] to the source's schedules."""
        self.source.set_progress(progress)

    def values(self) -> dict[str, float]:
        return self.source.values()

    def forward(
        self, logits: Tensor, target: Tensor, reference: Tensor | TopKLogits | None = None
    ) -> Tensor:
        if reference is not None and self.source.reference is None:
            what = (
                "a top-k TopKLogits"
                if isinstance(reference, TopKLogits)
                else f"a tensor of shape {tuple(reference.shape)}"
            )
            raise ValueError(f"{type(self.source).__name__} takes no reference, got {what}")
        if isinstance(reference, TopKLogits) and not isinstance(self.source, Teacher):
            raise ValueError(
                f"{type(self.source).__name__} needs the teacher's logits over every class, got "
                "a top-k reference (TopKLogits: k ids plus a tail bucket), which only Teacher "
                "(target=kd and its divergences) reads; for a top-k cache set "
                "teacher.tail=uniform (TeacherCache.open(..., tail='uniform')) to get dense "
                "logits rebuilt with a uniform tail, or use a dense cache"
            )
        return self.source.loss(
            logits,
            target,
            reference,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            weight=self.weight,
            binary=self.binary,
        )

    def extra_repr(self) -> str:
        return f"source={self.source!r}, ignore_index={self.ignore_index}, reduction={self.reduction!r}"
