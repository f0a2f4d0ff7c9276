"""What a mode is: one method's chunk math, its differentiable formula and its binary form.

A mode file holds everything the engine needs of one method:

- ``chunk``: the per-row loss of a chunk of logit rows, with d loss / d logits written into
  the gradient buffer ``g`` (divided by ``grad_scale``);
- ``reference``: the same per-row loss as a differentiable PyTorch formula (double backward,
  the tests);
- ``binary``: the loss of one logit per position (a Bernoulli form), or None.

The engine calls ``chunk`` on sub-chunks of rows; every argument is already checked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from torch import Tensor

from softlabel.kernels.spec import LossSpec


class Mode:
    """One engine mode. Subclasses set the class attributes and implement ``chunk`` and
    ``reference`` (and ``binary`` where a binary task has a form)."""

    #: the mode's name, ``LossSpec.mode``
    name: ClassVar[str] = ""
    #: hyper-parameters and their defaults (``LossSpec.params``)
    defaults: ClassVar[Mapping[str, Any]] = {}
    #: hyper-parameter -> its check in ``softlabel.kernels.checks`` (returns the value)
    checks: ClassVar[Mapping[str, Callable[[Any], Any]]] = {}
    #: teacher references read: any of "logits" (dense), "head" (a live linear head), "topk";
    #: empty when the mode takes no teacher
    teacher: ClassVar[frozenset[str]] = frozenset()
    #: True when the teacher may have another vocabulary than the student (cross-tokenizer)
    any_vocabulary: ClassVar[bool] = False
    #: True when the mode reads the previous model's probabilities (``LossSpec.previous``)
    previous: ClassVar[bool] = False
    #: True when the mode reads a prior (``LossSpec.prior``)
    prior: ClassVar[bool] = False
    #: True when a probability target (N, K) may stand in for class indices
    soft_target: ClassVar[bool] = True
    #: True when ``binary`` gives the loss of a binary task (one logit per position)
    has_binary: ClassVar[bool] = False
    #: why there is no binary form and what to use instead (for the refusal's message)
    no_binary: ClassVar[str] = "give multiclass logits (..., K) with K >= 2"

    def settings(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` checked and completed with the defaults; a name the mode does not read
        is refused."""
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            name = unknown[0]
            raise ValueError(
                f"{name}={params[name]!r} is not a setting of mode={self.name!r} (its settings: "
                f"{', '.join(sorted(self.defaults)) or 'none'})"
            )
        merged = {**self.defaults, **params}
        return {key: self.checks[key](value) for key, value in merged.items()}

    def needs_labels(self, spec: LossSpec) -> bool:
        """Whether the loss reads the target (False only for pure distillation)."""
        return True

    def work_buffers(self, spec: LossSpec) -> int:
        """(chunk rows, K) work buffers in the compute dtype one chunk needs besides ``g``."""
        return 0

    def temporaries(self, spec: LossSpec) -> int:
        """(chunk rows, K) arrays ``chunk`` allocates itself (counted when sizing chunks)."""
        return 0

    def grad_scale(self, spec: LossSpec) -> float:
        """c with d loss_i / d s_i = c * (what ``chunk`` writes into ``g``)."""
        return 1.0

    def logits_in_grad(self, spec: LossSpec) -> bool:
        """True when ``chunk`` reads the logit rows only as it would read them upcast into
        ``g``, so that the linear-head loss may make the logits in ``g`` itself."""
        return False

    def setup(self, spec: LossSpec, dtype: Any) -> Any:
        """Per-call constants (in the compute ``dtype``) handed to every ``chunk``."""
        return None

    def check(self, spec: LossSpec, mask: Tensor, num_classes: int) -> None:
        """Checks of this mode's settings against the call's tensors (``mask``: the rows that
        count, ``num_classes``: K) beyond the shared ones; the rules are those of
        ``softlabel.kernels.checks``."""

    def chunk(
        self,
        s: Tensor,
        y: Tensor | None,
        q: Tensor | None,
        g: Tensor,
        t: Any,
        prev: Tensor | None,
        work: list[Tensor],
        spec: LossSpec,
        state: Any,
    ) -> Tensor:
        """Per-row loss of the rows ``s`` (rows, K) with labels ``y`` (rows, 1) (any class at
        ignored rows) or probability targets ``q`` (rows, K); teacher rows ``t`` (a tensor
        (rows, K) or a ``TopKLogits`` chunk), previous probabilities ``prev``; ``work``: the
        mode's work buffers, at least ``rows`` rows each. Writes the gradient into ``g``."""
        raise NotImplementedError

    def reference(
        self, s: Tensor, labels: Tensor | None, spec: LossSpec, teacher: Any = None
    ) -> Tensor:
        """The per-row loss (N,) of logits ``s`` (N, K) (compute dtype) as a differentiable
        formula; ``labels`` (N,) int64 or None; ``teacher`` dense logits or ``TopKLogits``
        (a head already made into logits)."""
        raise NotImplementedError

    def binary(
        self, logits: Tensor, target: Tensor | None, spec: LossSpec, reference: Any
    ) -> Tensor:
        """The per-position loss of a binary task (one logit per position in the compute
        dtype, ``target`` 0/1 in that dtype), when ``has_binary``."""
        raise NotImplementedError
