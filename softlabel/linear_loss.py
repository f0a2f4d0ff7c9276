"""``LinearSoftTargetLoss``: ``SoftTargetLoss`` of a linear head's outputs, without the logits."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from softlabel.functional.linear import spec_head_loss, teacher_head
from softlabel.kernels.checks import check_chunk_rows, check_ignore_index, check_reduction
from softlabel.kernels.references import TopKLogits
from softlabel.loss import _class_weight, check_reference_given
from softlabel.targets import Hard, TargetSource


class LinearSoftTargetLoss(nn.Module):
    """``LinearSoftTargetLoss(source)(hidden, weight, target, bias=None, *, teacher_logits=None,
    teacher_hidden=None, teacher_weight=None, teacher_bias=None, previous_probs=None)``.

    The value and the gradients of ``hidden``, ``weight`` and ``bias`` are those of
    ``SoftTargetLoss(source)(F.linear(hidden, weight, bias), target, reference)``, but the
    (N, V) logits are never built: the engine runs the head and the loss chunk by chunk
    (``softlabel.functional.linear``). Every source with an engine mode runs here
    (``source.linear_head``): hard labels, every label smoothing but the online one, label
    relaxation, KD with every divergence, DKD, Tf-KD, ReLoop. The teacher reference is
    ``teacher_logits`` (dense (..., V) logits, or a top-k ``TopKLogits`` where the source
    accepts one: KD from a top-k cache never builds the student's logits) or a live teacher's
    head (``teacher_hidden``, ``teacher_weight``, ``teacher_bias``, also made chunk by chunk);
    ``previous_probs`` for ReLoop. ``hidden`` (..., H), ``weight`` (V, H)
    (``nn.Linear(H, V).weight``), ``bias`` (V,). The constructor's ``weight`` is the per-class
    weight, as for ``SoftTargetLoss``; ``chunk_rows`` overrides the engine's chunk size.
    Multiclass only.

    A model opts in by exposing ``features(x)`` (the hidden states) and ``head`` (an
    ``nn.Linear``) with ``model(x) == model.head(model.features(x))``; then
    ``forward_model(model, x, target, teacher=...)`` computes the loss of ``model(x)``.
    """

    weight: Tensor | None

    def __init__(
        self,
        source: TargetSource | None = None,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
        weight: Tensor | Sequence[float] | None = None,
        chunk_rows: int | None = None,
    ) -> None:
        super().__init__()
        if source is None:
            source = Hard()
        if not isinstance(source, TargetSource) or not source.linear_head:
            why = (
                getattr(source, "fallback", None)
                or ("it reads each batch's logits" if getattr(source, "observes", False) else None)
                or "it is not a softlabel.targets source"
            )
            raise TypeError(
                "source must be a softlabel.targets source with a per-row loss "
                f"(source.linear_head) or None, got {type(source).__name__}: {why}"
            )
        self.source = source
        self.ignore_index = check_ignore_index(ignore_index)
        self.reduction = check_reduction(reduction)
        self.chunk_rows = check_chunk_rows(chunk_rows)
        self.register_buffer("weight", _class_weight(weight))

    @property
    def name(self) -> str:
        return self.source.name

    def set_progress(self, progress: float) -> None:
        """Forward training progress in [0, 1] to the source's schedules."""
        self.source.set_progress(progress)

    def values(self) -> dict[str, float]:
        return self.source.values()

    def forward(
        self,
        hidden: Tensor,
        weight: Tensor,
        target: Tensor | None,
        bias: Tensor | None = None,
        *,
        teacher_logits: Tensor | TopKLogits | None = None,
        teacher_hidden: Tensor | None = None,
        teacher_weight: Tensor | None = None,
        teacher_bias: Tensor | None = None,
        previous_probs: Tensor | None = None,
    ) -> Tensor:
        source = self.source
        head_given = [
            name
            for name, value in (
                ("teacher_hidden", teacher_hidden),
                ("teacher_weight", teacher_weight),
                ("teacher_bias", teacher_bias),
            )
            if value is not None
        ]
        name = type(source).__name__
        if source.reference == "teacher_logits":
            if teacher_logits is not None and head_given:
                raise ValueError(
                    f"{name} takes teacher_logits or the teacher's head, not both: got "
                    f"teacher_logits and {', '.join(head_given)}"
                )
            if teacher_logits is None and (teacher_hidden is None or teacher_weight is None):
                raise ValueError(
                    f"{name} needs the teacher's head (teacher_hidden and teacher_weight, and "
                    "teacher_bias if it has one) or its logits (teacher_logits: dense (..., V) "
                    "or a TopKLogits)"
                )
            reference = teacher_logits
            if reference is None:
                reference = teacher_head(teacher_hidden, teacher_weight, teacher_bias)
            else:
                check_reference_given(source, reference)
        else:
            if head_given or teacher_logits is not None:
                given = head_given or ["teacher_logits"]
                raise ValueError(f"{name} takes no teacher head, got {', '.join(given)}")
            reference = previous_probs
            if previous_probs is not None and source.reference != "previous_probs":
                raise ValueError(
                    f"{name} takes no previous_probs, got a tensor of shape "
                    f"{tuple(previous_probs.shape)}"
                )
            if source.reference == "previous_probs" and previous_probs is None:
                raise ValueError(f"{name} needs previous_probs, got previous_probs=None")
        return spec_head_loss(
            hidden,
            weight,
            target,
            bias,
            source.spec(),
            reference,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            class_weight=self.weight,
            chunk_rows=self.chunk_rows,
            name=name,
        )

    def forward_model(
        self,
        model: nn.Module,
        x: Tensor,
        target: Tensor | None,
        *,
        teacher: nn.Module | None = None,
        previous_probs: Tensor | None = None,
    ) -> Tensor:
        """The loss of ``model(x)`` (and the teacher's ``teacher(x)``, computed without
        gradient) from their features and heads (see ``split_head``)."""
        features, head = split_head(model, "model")
        kwargs: dict[str, Tensor | None] = {"previous_probs": previous_probs}
        if teacher is not None:
            teacher_features, teacher_head_layer = split_head(teacher, "teacher")
            with torch.no_grad():
                kwargs["teacher_hidden"] = teacher_features(x)
            kwargs["teacher_weight"] = teacher_head_layer.weight.detach()
            if teacher_head_layer.bias is not None:
                kwargs["teacher_bias"] = teacher_head_layer.bias.detach()
        return self(features(x), head.weight, target, head.bias, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"source={self.source!r}, ignore_index={self.ignore_index}, "
            f"reduction={self.reduction!r}, chunk_rows={self.chunk_rows}"
        )


def split_head(
    model: nn.Module, name: str = "model"
) -> tuple[Callable[[Tensor], Tensor], nn.Linear]:
    """``(model.features, model.head)`` of a model that opts in to the linear-head loss:
    ``features(x)`` returns the hidden states (..., H) and ``head`` is an ``nn.Linear(H, V)``
    with ``model(x) == head(features(x))``."""
    features = getattr(model, "features", None)
    head = getattr(model, "head", None)
    if not callable(features) or not isinstance(head, nn.Linear):
        raise TypeError(
            f"{name} ({type(model).__name__}) must expose features(x) (the hidden states) and "
            f"head (an nn.Linear) to use the linear-head loss; got features="
            f"{type(features).__name__}, head={type(head).__name__}"
        )
    return features, head
