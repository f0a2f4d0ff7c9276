"""``SoftLabelModule``: a student trained with a ``SoftTargetLoss`` in Lightning.

Each training batch ``(x, y, index)`` goes: progress ``p = global_step / total_steps``
-> ``loss.set_progress(p)`` (schedules) -> reference from the provider (teacher logits,
previous probabilities or nothing) -> ``loss(student(x), y, reference)``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn

from softlabel.modules.metrics import build_metrics
from softlabel.modules.references import ReferenceProvider, model_device

__all__ = ["PROVIDER_PREFIX", "SoftLabelModule"]

PROVIDER_PREFIX = "reference_provider."
SCHEDULER_INTERVALS = ("step", "epoch")
# Scheduler arguments filled with the run's length when the config leaves them out.
_LENGTH_ARGUMENTS = ("T_max", "total_steps", "total_iters")

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


class SoftLabelModule(L.LightningModule):
    """Train ``student`` with ``loss``; frozen reference models are never saved or optimised.

    ``optimizer`` is a factory taking the student's parameters (``functools.partial``, e.g.
    from a Hydra ``_partial_: true`` config). ``scheduler`` is None or a factory taking the
    optimizer; a missing ``T_max`` / ``total_steps`` / ``total_iters`` is filled with the run
    length: the estimated optimizer steps for ``scheduler_interval="step"``, the max epochs
    for ``"epoch"``.
    """

    def __init__(
        self,
        student: nn.Module,
        loss: nn.Module,
        *,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "step",
        reference_provider: ReferenceProvider | None = None,
        task: str = "multiclass",
        num_classes: int,
    ) -> None:
        super().__init__()
        if task not in ("multiclass", "binary"):
            raise ValueError(f"task must be 'multiclass' or 'binary', got {task!r}")
        if task == "binary" and num_classes != 1:
            raise ValueError(f"num_classes must be 1 for a binary task, got {num_classes!r}")
        if scheduler_interval not in SCHEDULER_INTERVALS:
            raise ValueError(
                f"scheduler_interval must be one of {SCHEDULER_INTERVALS}, got {scheduler_interval!r}"
            )
        if not callable(optimizer):
            raise TypeError(f"optimizer must be a factory of torch optimizers, got {optimizer!r}")
        needed = getattr(getattr(loss, "source", None), "reference", None)
        given = getattr(reference_provider, "kind", None)
        if needed != given:
            source_name = type(getattr(loss, "source", loss)).__name__
            what = {
                "teacher_logits": "a teacher (teacher=...)",
                "previous_probs": "a previous model (previous=...)",
                None: "no reference",
            }
            raise ValueError(
                f"the target source {source_name} reads {what.get(needed, repr(needed))} "
                f"(reference {needed!r}) but the reference_provider gives {given!r} "
                f"({type(reference_provider).__name__})"
            )
        student_device = model_device(student) if isinstance(student, nn.Module) else None
        reference_device = getattr(reference_provider, "device", None)
        if student_device is not None and reference_device not in (None, student_device):
            role = getattr(reference_provider, "role", "reference")
            raise ValueError(
                f"the {role} model of {type(reference_provider).__name__} is on "
                f"{reference_device} but the student is on {student_device}: put both on one "
                f"device before building SoftLabelModule (e.g. .to({str(student_device)!r}) on "
                "the frozen model); the Trainer then moves them together"
            )
        self.student = student
        self.loss = loss
        self.reference_provider = reference_provider
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.task = task
        self.num_classes = num_classes
        metrics = build_metrics(task, 2 if task == "binary" else num_classes)
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        # lr_schedulers of the checkpoint a fit resumes from (set by on_load_checkpoint)
        self._resumed_schedulers: list[dict[str, Any]] | None = None

    def monitor_keys(self) -> list[str]:
        """The metric names this module logs that a callback can monitor (``val/nll``,
        ``train/loss``, ...): every metric on ``train/`` and ``val/``, the loss and the
        target's hyper-parameters."""
        names = [*self.val_metrics.keys(), *self.train_metrics.keys()]
        names += ["train/loss", "train/loss_step", "train/loss_epoch"]
        source = getattr(self.loss, "source", None)
        if source is not None and callable(getattr(source, "values", None)):
            names += [f"train/{k}" for k in source.values()]
        return sorted(set(names))

    # ----------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> Tensor:
        """Student logits: ``(N, K)`` for multiclass, ``(N,)`` for binary."""
        out = self.student(x)
        return out.reshape(out.shape[0]) if self.task == "binary" else out

    def reference(self, x: Tensor, index: Tensor) -> Tensor | None:
        """The batch's reference for the loss, or None when the source needs none."""
        if self.reference_provider is None:
            return None
        ref = self.reference_provider(x, index)
        if self.task == "binary":
            ref = ref.reshape(x.shape[0])
        return ref

    def progress(self) -> float:
        """Training progress ``global_step / estimated_stepping_batches`` in [0, 1]."""
        total = self.trainer.estimated_stepping_batches
        if not total or not math.isfinite(total):
            return 0.0
        return min(1.0, self.global_step / total)

    # ---------------------------------------------------------------- training
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.loss.set_progress(self.progress())

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y, index = batch
        logits = self(x)
        loss = self.loss(logits, y, self.reference(x, index))
        source = getattr(self.loss, "source", None)
        observe = getattr(source, "on_train_batch_end", None)
        if callable(observe):  # statistics a source keeps across steps (e.g. OLS)
            observe(logits.detach(), y)
        n = x.shape[0]
        self.log(
            "train/loss",
            loss,
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=n,
            sync_dist=True,
        )
        if source is not None and self._is_logging_step():
            # The hyper-parameters in force (schedules move them); logged at the logger's
            # interval only, since a log call per step costs more than a cached lookup.
            values = {f"train/{k}": float(v) for k, v in source.values().items()}
            if values:
                self.log_dict(values, on_step=True, on_epoch=False, batch_size=n)
        self.train_metrics.update(logits.detach(), y)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def on_train_epoch_start(self) -> None:
        self._source_epoch_ended = False

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # The source's epoch ends with the epoch's last batch, before validation and the
        # checkpoints written after it, so they hold the statistics already turned over.
        total = self.trainer.num_training_batches
        if math.isfinite(total) and batch_idx + 1 >= total:
            self._end_source_epoch()

    def on_train_epoch_end(self) -> None:
        self._end_source_epoch()  # epochs of unknown length (iterable datasets)

    def _end_source_epoch(self) -> None:
        """Call the source's ``on_train_epoch_end`` once per epoch, on every rank."""
        if getattr(self, "_source_epoch_ended", False):
            return
        self._source_epoch_ended = True
        hook = getattr(getattr(self.loss, "source", None), "on_train_epoch_end", None)
        if callable(hook):
            hook(self._sum_over_ranks)

    def _sum_over_ranks(self, tensor: Tensor) -> Tensor:
        """``tensor`` summed over the training processes (itself on one device)."""
        return self.trainer.strategy.reduce(tensor.clone(), reduce_op="sum")

    def _is_logging_step(self) -> bool:
        trainer = self._trainer
        every = getattr(trainer, "log_every_n_steps", 1) if trainer is not None else 1
        return self.global_step % max(int(every), 1) == 0

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        x, y, _ = batch
        self.val_metrics.update(self(x), y)
        self.log_dict(self.val_metrics, on_step=False, on_epoch=True, batch_size=x.shape[0])

    def test_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        x, y, _ = batch
        self.test_metrics.update(self(x), y)
        self.log_dict(self.test_metrics, on_step=False, on_epoch=True, batch_size=x.shape[0])

    def predict_step(
        self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int
    ) -> dict[str, Tensor]:
        """``{"index", "probs"}``: softmax (multiclass) or sigmoid (binary) of the student."""
        x, _, index = batch
        logits = self(x)
        probs = torch.sigmoid(logits) if self.task == "binary" else torch.softmax(logits, dim=-1)
        return {"index": index, "probs": probs}

    # -------------------------------------------------------------- optimizers
    def configure_optimizers(self) -> Any:
        params = [p for p in self.student.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            self._check_no_resumed_schedule()
            return optimizer
        scheduler = self.scheduler_factory(optimizer, **self._run_length_arguments())
        self._check_resumed_schedule(scheduler)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval},
        }

    def _run_length_arguments(self) -> dict[str, int]:
        factory = self.scheduler_factory
        target = getattr(factory, "func", factory)
        given = set(getattr(factory, "keywords", {}) or {})
        try:
            accepted = set(inspect.signature(target).parameters)
        except (TypeError, ValueError):
            return {}
        names = [n for n in _LENGTH_ARGUMENTS if n in accepted and n not in given]
        if not names or (target is torch.optim.lr_scheduler.OneCycleLR and "epochs" in given):
            return {}
        if self.scheduler_interval == "step":
            length = self.trainer.estimated_stepping_batches
        else:
            length = self.trainer.max_epochs
        if length is None or not math.isfinite(length) or length < 1:
            raise ValueError(
                f"scheduler {getattr(target, '__name__', target)} needs the run length "
                f"({names[0]}), but it is unknown ({length!r}): set trainer.max_epochs or "
                f"trainer.max_steps, or set the scheduler's {names[0]} explicitly"
            )
        return {names[0]: int(length)}

    # ---------------------------------------------------------------- resuming
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the checkpoint's scheduler states: ``configure_optimizers`` compares them
        with the schedule this run configures, before Lightning restores the saved one."""
        schedulers = checkpoint.get("lr_schedulers")
        self._resumed_schedulers = list(schedulers) if schedulers is not None else None

    def _resuming_fit(self) -> bool:
        trainer = self._trainer
        if trainer is None or trainer.ckpt_path is None:
            return False
        return trainer.state.fn == TrainerFn.FITTING

    def _check_no_resumed_schedule(self) -> None:
        saved = self._resumed_schedulers if self._resuming_fit() else None
        self._resumed_schedulers = None
        if saved:
            raise ValueError(
                f"cannot resume from ckpt_path={self.trainer.ckpt_path!r}: the checkpoint holds "
                f"the state of {len(saved)} learning-rate scheduler(s) but this run configures "
                "none (scheduler=none); resume with the interrupted run's scheduler settings"
            )

    def _check_resumed_schedule(self, scheduler: Any) -> None:
        """ValueError when a resumed fit would silently keep a schedule of another length:
        Lightning restores the saved state (``T_max`` included) over the new one."""
        saved_all = self._resumed_schedulers if self._resuming_fit() else None
        self._resumed_schedulers = None
        if saved_all is None:
            return
        ckpt = self.trainer.ckpt_path
        if len(saved_all) != 1:
            raise ValueError(
                f"cannot resume from ckpt_path={ckpt!r}: the checkpoint holds "
                f"{len(saved_all)} learning-rate scheduler states but this run configures 1 "
                f"({type(scheduler).__name__}); resume with the interrupted run's scheduler settings"
            )
        saved = saved_all[0]
        for name in _LENGTH_ARGUMENTS:
            if name not in saved or not hasattr(scheduler, name):
                continue
            old, new = saved[name], getattr(scheduler, name)
            if old == new:
                continue
            unit = "optimizer steps" if self.scheduler_interval == "step" else "epochs"
            raise ValueError(
                f"cannot resume from ckpt_path={ckpt!r}: the checkpoint's "
                f"{type(scheduler).__name__} has {name}={old} ({unit}), but this run's length "
                f"gives {name}={new} (trainer.max_epochs={self.trainer.max_epochs}, "
                f"trainer.max_steps={self.trainer.max_steps}). Lightning would restore "
                f"{name}={old}, so the learning rate would not follow this run's schedule "
                f"(a cosine schedule climbs back up after {old} {unit}). "
                f"{self._resume_hint(old, new)}"
            )

    def _resume_hint(self, old: int, new: int) -> str:
        trainer = self.trainer
        same = "To continue the interrupted run, pass its settings again"
        if self.scheduler_interval == "epoch":
            same += f" (trainer.max_epochs={old})"
        elif trainer.max_steps == -1 and trainer.max_epochs and trainer.max_epochs > 0:
            per_epoch, rest = divmod(int(new), int(trainer.max_epochs))
            if not rest and per_epoch and old % per_epoch == 0:
                same += f" (trainer.max_epochs={old // per_epoch} at {per_epoch} steps per epoch)"
        else:
            same += " (trainer.max_epochs / max_steps, batch size, limit_train_batches)"
        return f"{same}; to train for a different length, start a new run (no ckpt_path)."

    # ------------------------------------------------- frozen models stay out of checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop the frozen reference models' weights: a checkpoint holds the student only."""
        state = checkpoint.get("state_dict", {})
        checkpoint["state_dict"] = {
            k: v for k, v in state.items() if not k.startswith(PROVIDER_PREFIX)
        }

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ):  # type: ignore[override]
        """Strict for the student; reference-model keys may be absent (they are never saved)."""
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if not k.startswith(PROVIDER_PREFIX)]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(
                "error loading SoftLabelModule weights: "
                f"missing keys {missing[:5]}, unexpected keys {result.unexpected_keys[:5]}"
            )
        return result
