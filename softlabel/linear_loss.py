"""``LinearSoftTargetLoss``: ``SoftTargetLoss`` of a linear head's outputs, without the logits."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from softlabel.functional._validation import check_reduction
from softlabel.functional.linear import (
    linear_cross_entropy_loss,
    linear_decoupled_distillation_loss,
    linear_distillation_loss,
    linear_label_smoothing_loss,
    linear_self_correction_loss,
)
from softlabel.targets import (
    ClassPrior,
    DecoupledTeacher,
    Hard,
    PreviousModel,
    TargetSource,
    Teacher,
    UniformPrior,
)

_SUPPORTED = (Hard, UniformPrior, ClassPrior, Teacher, DecoupledTeacher, PreviousModel)
_TEACHERS = (Teacher, DecoupledTeacher)


class LinearSoftTargetLoss(nn.Module):
    """``LinearSoftTargetLoss(source)(hidden, weight, target, bias=None, *, teacher_hidden=None,
    teacher_weight=None, teacher_bias=None, previous_probs=None)``.

    The value and the gradients of ``hidden``, ``weight`` and ``bias`` are those of
    ``SoftTargetLoss(source)(F.linear(hidden, weight, bias), target, reference)``, but the
    (N, V) logits are never built: the functions of ``softlabel.functional.linear`` run the
    head and the loss chunk by chunk. ``reference`` there is the teacher's
    ``F.linear(teacher_hidden, teacher_weight, teacher_bias)`` (``Teacher`` with any
    divergence, ``DecoupledTeacher``) or ``previous_probs`` (``PreviousModel``); the other
    sources with a per-row loss are ``Hard``, ``UniformPrior`` and ``ClassPrior`` (a prior
    vector or a class-conditional matrix). ``hidden`` (..., H), ``weight`` (V, H)
    (``nn.Linear(H, V).weight``), ``bias`` (V,). The constructor's ``weight`` is the per-class
    weight, as for ``SoftTargetLoss``; ``chunk_rows`` overrides the kernel's chunk size.
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
        if not isinstance(source, _SUPPORTED):
            names = ", ".join(kind.__name__ for kind in _SUPPORTED)
            raise TypeError(
                f"source must be a softlabel.targets source with a per-row loss ({names}) "
                f"or None, got {type(source).__name__}"
            )
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
        if chunk_rows is not None and (
            isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1
        ):
            raise ValueError(f"chunk_rows must be None or an int >= 1, got {chunk_rows!r}")
        self.source = source
        self.ignore_index = ignore_index
        self.reduction = check_reduction(reduction)
        self.chunk_rows = chunk_rows
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
        teacher_hidden: Tensor | None = None,
        teacher_weight: Tensor | None = None,
        teacher_bias: Tensor | None = None,
        previous_probs: Tensor | None = None,
    ) -> Tensor:
        source = self.source
        teacher_given = [
            name
            for name, value in (
                ("teacher_hidden", teacher_hidden),
                ("teacher_weight", teacher_weight),
                ("teacher_bias", teacher_bias),
            )
            if value is not None
        ]
        if teacher_given and not isinstance(source, _TEACHERS):
            raise ValueError(
                f"{type(source).__name__} takes no teacher head, got {', '.join(teacher_given)}"
            )
        if previous_probs is not None and not isinstance(source, PreviousModel):
            raise ValueError(
                f"{type(source).__name__} takes no previous_probs, got a tensor of shape "
                f"{tuple(previous_probs.shape)}"
            )
        options = {
            "ignore_index": self.ignore_index,
            "reduction": self.reduction,
            "class_weight": self.weight,
            "chunk_rows": self.chunk_rows,
        }
        if isinstance(source, _TEACHERS):
            if teacher_hidden is None or teacher_weight is None:
                raise ValueError(
                    f"{type(source).__name__} needs the teacher's head: pass teacher_hidden and "
                    "teacher_weight (and teacher_bias if it has one)"
                )
            options.update(
                teacher_hidden=teacher_hidden,
                teacher_weight=teacher_weight,
                teacher_bias=teacher_bias,
                temperature=source.temperature,
                alpha=source.alpha,
            )
            if isinstance(source, DecoupledTeacher):
                return linear_decoupled_distillation_loss(
                    hidden,
                    weight,
                    target,
                    bias,
                    beta=source.beta,
                    ce_weight=source.ce_weight,
                    **options,
                )
            if source.divergence == "jsd":
                options["beta"] = source.beta
            return linear_distillation_loss(
                hidden,
                weight,
                target,
                bias,
                divergence=source.divergence,
                standardize=source.standardize,
                **options,
            )
        if isinstance(source, PreviousModel):
            if previous_probs is None:
                raise ValueError("PreviousModel needs previous_probs, got previous_probs=None")
            return linear_self_correction_loss(
                hidden, weight, target, bias, previous=previous_probs, alpha=source.alpha, **options
            )
        if isinstance(source, ClassPrior):
            if not source.has_prior:
                raise ValueError(
                    "ClassPrior has no prior: pass prior= or counts=, or call "
                    "set_class_counts(counts) / set_prior(counts_or_prior) first"
                )
            return linear_label_smoothing_loss(
                hidden,
                weight,
                target,
                bias,
                smoothing=source.smoothing,
                prior=source.prior,
                **options,
            )
        if isinstance(source, UniformPrior):
            return linear_label_smoothing_loss(
                hidden, weight, target, bias, smoothing=source.smoothing, **options
            )
        return linear_cross_entropy_loss(hidden, weight, target, bias, **options)

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
            teacher_features, teacher_head = split_head(teacher, "teacher")
            with torch.no_grad():
                kwargs["teacher_hidden"] = teacher_features(x)
            kwargs["teacher_weight"] = teacher_head.weight.detach()
            if teacher_head.bias is not None:
                kwargs["teacher_bias"] = teacher_head.bias.detach()
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
