"""``SoftTargetLoss``: an ``nn.Module`` around a target source."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from softlabel.kernels.checks import check_ignore_index, check_reduction
from softlabel.kernels.references import TopKLogits
from softlabel.targets import Hard, TargetSource


class SoftTargetLoss(nn.Module):
    """``SoftTargetLoss(source)(logits, target, reference=None)``.

    Every soft-label method is a target source (``softlabel.targets``: hard labels, label
    smoothing toward a uniform, class or class-conditional prior, online, margin-based and
    confidence-adaptive smoothing, label relaxation, KD with every divergence, standardized
    KD, DKD, DIST, Tf-KD's virtual teacher, ReLoop's previous model); this module gives the
    same values and gradients as the source's functional form. ``reference`` is what the
    source reads (``source.reference``): the teacher's logits (also a top-k ``TopKLogits``
    where ``source.accepts("topk")``) or the previous model's probabilities. ``weight`` (per
    class) is a buffer, so it follows ``.to(device)``. ``target`` holds class indices
    ``(...)`` or class probabilities ``(..., K)``; ``binary=True`` makes it one 0/1 target per
    logit (binary or multi-label).
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
                "source must be a softlabel.targets source (Hard, UniformPrior, Teacher, "
                f"PreviousModel, ... see softlabel.targets) or None, got {type(source).__name__}"
            )
        self.source = source
        self.ignore_index = check_ignore_index(ignore_index)
        self.reduction = check_reduction(reduction)
        if binary is not None and not isinstance(binary, bool):
            raise TypeError(f"binary must be True, False or None, got {binary!r}")
        self.binary = binary
        self.register_buffer("weight", _class_weight(weight))

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
        check_reference_given(self.source, reference)
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


def _class_weight(weight: Tensor | Sequence[float] | None) -> Tensor | None:
    """The per-class weight as a floating 1-D tensor (its values are checked per call)."""
    if weight is None:
        return None
    weight = torch.as_tensor(weight)
    if not weight.is_floating_point():
        weight = weight.float()
    if weight.dim() != 1:
        raise ValueError(f"weight must be a 1-D per-class tensor, got shape {tuple(weight.shape)}")
    return weight


def check_reference_given(source: TargetSource, reference: object) -> None:
    """A reference only for a source that reads one, and a top-k one only where accepted."""
    if reference is not None and source.reference is None:
        what = (
            "a top-k TopKLogits"
            if isinstance(reference, TopKLogits)
            else f"a tensor of shape {tuple(reference.shape)}"
        )
        raise ValueError(f"{type(source).__name__} takes no reference, got {what}")
    if isinstance(reference, TopKLogits) and not source.accepts("topk"):
        raise ValueError(
            f"{type(source).__name__} needs the teacher's logits over every class, got "
            "a top-k reference (TopKLogits: k ids plus a tail bucket), which only Teacher "
            "(target=kd and its divergences) reads; for a top-k cache set "
            "teacher.tail=uniform (TeacherCache.open(..., tail='uniform')) to get dense "
            "logits rebuilt with a uniform tail, or use a dense cache"
        )
