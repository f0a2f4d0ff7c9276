"""Online label smoothing (Zhang et al., IEEE TIP 2021): a class-conditional prior learnt
from the model's own correct predictions of the previous epoch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from softlabel.functional._engine import spec_loss
from softlabel.kernels.spec import LossSpec
from softlabel.targets._base import HyperParameter, TargetSource, hyper_parameter


def _sum_over_ranks(tensor: Tensor) -> Tensor:
    """``tensor`` summed over the ``torch.distributed`` ranks (itself in one process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)
    return tensor


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


class OnlineLabelSmoothing(TargetSource, nn.Module):
    """``loss = (1 - eps) * CE(s, y) + eps * H(S[y], p)`` with a (K, K) prior S.

    Row y of S is the mean softmax of the training samples of class y that the model
    predicted correctly in the previous epoch (uniform 1/K in the first epoch) (Zhang et al.,
    "Delving Deep into Label Smoothing", IEEE TIP 2021; their ``alpha`` on the hard term is
    ``1 - smoothing`` here). A class with no correct sample in an epoch keeps its previous
    row. The statistics are collected by ``on_train_batch_end(logits, target)`` after each
    training step and turned into the next prior by ``on_train_epoch_end(reduce_sum)``,
    which sums them over the ranks first; ``SoftLabelModule`` calls both. They are saved in
    ``state_dict`` (an ``nn.Module`` extra state, so Lightning checkpoints them and DDP does
    not broadcast them as buffers). Multiclass with class-index targets only.
    """

    name = "ols"
    reference = None
    mode = "ls"
    smoothing = hyper_parameter()

    def __init__(self, smoothing: HyperParameter = 0.5, num_classes: int | None = None) -> None:
        nn.Module.__init__(self)
        TargetSource.__init__(self, smoothing=smoothing)
        if num_classes is not None and (
            isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2
        ):
            raise ValueError(f"num_classes must be an integer >= 2 or None, got {num_classes!r}")
        self._num_classes: int | None = num_classes
        self._prior: Tensor | None = None  # (K, K) float64; None: uniform
        self._sums: Tensor | None = None  # (K, K) float64: row y sums softmax of correct y's
        self._counts: Tensor | None = None  # (K,) float64: correct samples per class
        self._epochs = 0
        self._ignore_index = -100
        self._cached: Tensor | None = None  # the prior in the last loss call's dtype/device

    # ------------------------------------------------------------------ state
    @property
    def num_classes(self) -> int | None:
        return self._num_classes

    @property
    def epochs(self) -> int:
        """Epochs whose statistics have been turned into a prior."""
        return self._epochs

    @property
    def prior(self) -> Tensor | None:
        """The (K, K) prior in force (float64, CPU); None while K is unknown."""
        k = self._num_classes
        if k is None:
            return None
        if self._prior is None:
            return torch.full((k, k), 1.0 / k, dtype=torch.float64)
        return self._prior.detach().to("cpu", copy=True)

    @property
    def statistics(self) -> tuple[Tensor, Tensor] | None:
        """``(sums, counts)`` of this epoch so far on this rank (float64, CPU), or None."""
        if self._sums is None or self._counts is None:
            return None
        return self._sums.to("cpu", copy=True), self._counts.to("cpu", copy=True)

    def _set_num_classes(self, k: int) -> None:
        if self._num_classes is None:
            self._num_classes = k
        elif self._num_classes != k:
            raise ValueError(
                f"OnlineLabelSmoothing holds statistics of {self._num_classes} classes, got "
                f"logits with K={k} classes in the last dimension"
            )

    def get_extra_state(self) -> dict[str, Any]:
        def cpu(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach().to("cpu", copy=True)

        return {
            "num_classes": self._num_classes,
            "prior": cpu(self._prior),
            "sums": cpu(self._sums),
            "counts": cpu(self._counts),
            "epochs": self._epochs,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore ``get_extra_state``. On a rank other than 0 the epoch's partial sums are
        dropped: a checkpoint holds rank 0's, and counting them on every rank would count
        them once per rank (a checkpoint taken at an epoch boundary has none)."""
        self._num_classes = state["num_classes"]
        self._prior = state["prior"]
        self._sums, self._counts = state["sums"], state["counts"]
        if _rank() != 0 and self._sums is not None and self._counts is not None:
            self._sums, self._counts = self._sums.zero_(), self._counts.zero_()
        self._epochs = int(state["epochs"])
        self._cached = None

    # ------------------------------------------------------------------ hooks
    @torch.no_grad()
    def on_train_batch_end(self, logits: Tensor, target: Tensor) -> None:
        """Add the softmax of the correctly predicted positions to their class's row."""
        if target.is_floating_point() or target.shape != logits.shape[:-1]:
            raise ValueError(
                "OnlineLabelSmoothing counts correct predictions of class indices: needs "
                f"logits (..., K) and an integer target (...), got logits "
                f"{tuple(logits.shape)} and target {tuple(target.shape)} ({target.dtype})"
            )
        k = logits.shape[-1]
        self._set_num_classes(k)
        rows = logits.detach().reshape(-1, k)
        labels = target.reshape(-1).to(rows.device)
        if self._sums is None or self._counts is None:
            self._sums = torch.zeros(k, k, dtype=torch.float64, device=rows.device)
            self._counts = torch.zeros(k, dtype=torch.float64, device=rows.device)
        elif self._sums.device != rows.device:
            self._sums, self._counts = self._sums.to(rows.device), self._counts.to(rows.device)
        valid = (labels != self._ignore_index) & (labels >= 0) & (labels < k)
        correct = (valid & (rows.argmax(dim=1) == labels)).nonzero().view(-1)
        probs = torch.softmax(rows.index_select(0, correct).to(torch.float64), dim=1)
        classes = labels.index_select(0, correct)
        self._sums.index_add_(0, classes, probs)
        self._counts.index_add_(0, classes, torch.ones_like(classes, dtype=torch.float64))

    @torch.no_grad()
    def on_train_epoch_end(self, reduce_sum: Callable[[Tensor], Tensor] | None = None) -> None:
        """Turn the epoch's statistics, summed over the ranks, into the next prior."""
        k = self._num_classes
        if k is None:  # no training batch seen (on any rank, since ranks see the same count)
            return
        if self._sums is None or self._counts is None:
            device = self._prior.device if self._prior is not None else torch.device("cpu")
            self._sums = torch.zeros(k, k, dtype=torch.float64, device=device)
            self._counts = torch.zeros(k, dtype=torch.float64, device=device)
        packed = torch.cat([self._sums.reshape(-1), self._counts])
        packed = (reduce_sum or _sum_over_ranks)(packed)
        sums = packed[: k * k].view(k, k).to(self._sums.device)
        counts = packed[k * k :].to(self._sums.device)
        previous = self.prior.to(sums.device)  # type: ignore[union-attr]
        seen = counts > 0
        totals = torch.where(seen, sums.sum(dim=1), torch.ones_like(counts)).unsqueeze(1)
        updated = torch.where(seen.unsqueeze(1), sums / totals, previous)
        self._prior = updated
        self._sums.zero_()
        self._counts.zero_()
        self._epochs += 1
        self._cached = None

    # ------------------------------------------------------------------ loss
    def _prior_for(self, like: Tensor) -> Tensor | None:
        if self._prior is None:
            return None  # first epoch: uniform
        dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        cached = self._cached
        if cached is None or cached.device != like.device or cached.dtype != dtype:
            self._cached = cached = self._prior.to(device=like.device, dtype=dtype)
        return cached

    @property
    def binary(self) -> bool:
        """Multiclass only: the statistics are per class."""
        return False

    def _spec_params(self) -> dict[str, Any]:
        return {"eps": self.smoothing}

    def _spec_prior(self) -> Tensor | None:
        return self._prior  # None: uniform (the first epoch)

    def _loss(self, logits: Tensor, target: Tensor, reference: None, **options: Any) -> Tensor:
        if options.get("binary"):
            raise ValueError(
                "OnlineLabelSmoothing needs multiclass logits (..., K), got binary=True"
            )
        if logits.dim() >= 1:
            self._set_num_classes(logits.shape[-1])
        self._ignore_index = options.get("ignore_index", -100)
        spec = LossSpec("ls", {"eps": self.smoothing}, prior=self._prior_for(logits))
        return spec_loss(logits, target, spec, name="OnlineLabelSmoothing", **options)

    def __repr__(self) -> str:
        return (
            f"OnlineLabelSmoothing(smoothing={self._schedules['smoothing']!r}, "
            f"num_classes={self._num_classes}, epochs={self._epochs})"
        )
