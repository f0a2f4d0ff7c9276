"""The self-correction loop: model versions v1..vN trained over a stream's chunks.

For version ``t >= 2`` (chunk ``t`` is the training data of ``v(t)``):

1. ``v(t-1)`` predicts on chunk ``t`` (what the serving model logs); the probabilities go
   into the prediction store as version ``t-1``, with the checkpoint hash of ``v(t-1)`` and
   the fingerprint of chunk ``t``. With ``reference_from="log"`` the store's version ``t-1``
   is instead imported from chunk ``t``'s logged predictions (the stream's
   ``logged_column``): source ``log:<column>``, and as checkpoint hash the
   :func:`~softlabel.loop.store.logged_predictions_fingerprint` of the logged values;
2. ``v(t)`` starts from ``v(t-1)``'s weights (``warm_start``) or from a fresh init, and is
   trained on chunk ``t`` with a fresh optimizer and the method's target:
   ``reloop`` (reference read from the store), ``hard`` (plain fine-tuning) or ``kd``
   (``v(t-1)`` as a live teacher);
3. ``v(t)`` is evaluated on chunk ``t+1`` (the data it would serve) and on the held-out
   set, with flip metrics against ``v(t-1)`` on the same samples.

``v1`` is trained on chunk 1 with hard labels (there is no previous version).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from softlabel.loop.evaluate import chunk_metrics, predict_logits, probabilities
from softlabel.loop.store import PredictionStore, logged_predictions_fingerprint
from softlabel.loop.stream import Chunk, Stream

__all__ = [
    "METHODS",
    "REFERENCE_FROM",
    "LoopSettings",
    "Version",
    "check_reference_source",
    "check_versions",
    "run_method",
    "train_first_version",
]

METHODS = ("reloop", "hard", "kd")
REFERENCE_FROM = ("model", "log")
SOURCE_FOR_METHOD = {"reloop": "reloop", "hard": "hard", "kd": "kd"}


@dataclass
class LoopSettings:
    """How each version is trained.

    ``make_source(name)`` returns a fresh target source for ``"hard"``, ``"reloop"`` or
    ``"kd"``; ``optimizer`` is a factory of the student's parameters. ``reference_from``:
    what fills the store that ReLoop trains against, ``"model"`` (``v(t-1)`` re-predicts
    chunk ``t``) or ``"log"`` (the stream's logged predictions of chunk ``t``).
    """

    make_source: Callable[[str], Any]
    optimizer: Callable[..., torch.optim.Optimizer] = field(
        default_factory=lambda: partial(torch.optim.Adam, lr=1e-3)
    )
    epochs: int = 2
    first_epochs: int | None = None
    batch_size: int = 256
    eval_batch_size: int = 4096
    warm_start: bool = True
    accelerator: str = "cpu"
    csv_logs: bool = True
    reference_from: str = "model"

    def __post_init__(self) -> None:
        if self.reference_from not in REFERENCE_FROM:
            raise ValueError(
                f"reference_from must be one of {REFERENCE_FROM}, got {self.reference_from!r}"
            )
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.first_epochs is not None and (
            not isinstance(self.first_epochs, int) or self.first_epochs < 1
        ):
            raise ValueError(f"first_epochs must be null or an int >= 1, got {self.first_epochs!r}")


@dataclass
class Version:
    """A trained version: its model, checkpoint file and hash, and its metrics row."""

    number: int
    model: nn.Module
    checkpoint: Path
    checkpoint_sha256: str
    row: dict[str, Any]


_QUIET_MESSAGES = (
    ".*does not have many workers.*",
    ".*smaller than the logging interval.*",
    ".*no `val_dataloader`.*",
    ".*module\\(s\\) in eval mode at the start of training.*",  # kd's frozen teacher, on purpose
    ".*treespec, LeafSpec.*",
)


def _quiet_lightning() -> None:
    """Inside a ``warnings.catch_warnings()`` block: silence Lightning's per-fit chatter."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in _QUIET_MESSAGES:
        warnings.filterwarnings("ignore", message=message)


def _fit(
    module: Any,
    chunk: Chunk,
    task: str,
    epochs: int,
    settings: LoopSettings,
    log_dir: Path,
    name: str,
    seed: int,
) -> Any:
    """Train ``module`` on ``chunk`` with a Lightning Trainer; return the trainer."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    loader = DataLoader(
        chunk.dataset(task),
        batch_size=settings.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    with warnings.catch_warnings():
        _quiet_lightning()
        trainer = L.Trainer(
            max_epochs=epochs,
            accelerator=settings.accelerator,
            devices=1,
            logger=CSVLogger(log_dir, name="logs", version=name) if settings.csv_logs else False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            log_every_n_steps=10,
            default_root_dir=log_dir,
        )
        trainer.fit(module, train_dataloaders=loader)
    return trainer


def _train_version(
    *,
    number: int,
    stream: Stream,
    student: nn.Module,
    source_name: str,
    provider: Any,
    settings: LoopSettings,
    out_dir: Path,
    seed: int,
) -> tuple[Path, str, float]:
    from softlabel import SoftTargetLoss
    from softlabel.modules import SoftLabelModule, file_sha256

    module = SoftLabelModule(
        student,
        SoftTargetLoss(settings.make_source(source_name)),
        optimizer=settings.optimizer,
        reference_provider=provider,
        task=stream.task,
        num_classes=stream.num_classes,
    )
    epochs = settings.first_epochs if number == 1 and settings.first_epochs else settings.epochs
    start = time.perf_counter()
    trainer = _fit(
        module,
        stream.chunks[number - 1],
        stream.task,
        epochs,
        settings,
        out_dir,
        f"v{number}",
        seed,
    )
    elapsed = time.perf_counter() - start
    checkpoint = out_dir / "checkpoints" / f"v{number}.ckpt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    tmp = checkpoint.with_suffix(".ckpt.tmp")
    trainer.save_checkpoint(tmp)
    tmp.replace(checkpoint)
    student.eval()
    return checkpoint, file_sha256(checkpoint), elapsed


def _evaluate(
    stream: Stream, number: int, model: nn.Module, previous: nn.Module | None, batch_size: int
) -> dict[str, float]:
    row: dict[str, float] = {}
    sets = {"holdout": stream.holdout}
    if number < len(stream.chunks):
        sets["next"] = stream.chunks[number]
    for prefix, chunk in sets.items():
        logits = predict_logits(model, chunk, stream.task, batch_size)
        prev = (
            predict_logits(previous, chunk, stream.task, batch_size)
            if previous is not None
            else None
        )
        for name, value in chunk_metrics(
            logits, prev, chunk, stream.task, stream.num_classes
        ).items():
            row[f"{prefix}/{name}"] = value
    return row


def _fill_store(
    store: PredictionStore,
    version: int,
    chunk: Chunk,
    stream: Stream,
    previous: Version,
    settings: LoopSettings,
) -> str:
    """Write store ``version`` for ``chunk``; return the checkpoint hash its manifest holds.

    ``model``: ``v(t-1)``'s probabilities, under its checkpoint hash. ``log``: the chunk's
    logged predictions, under :func:`logged_predictions_fingerprint` (recomputed here from
    the log, so a store holding other values is refused when read).
    """
    if settings.reference_from == "log":
        logged = chunk.logged_probs
        if logged is None:
            raise ValueError(f"chunk {chunk.name!r} of {stream.name!r} has no logged predictions")
        expected = logged_predictions_fingerprint(chunk.ids, logged)
        store.import_predictions(
            version,
            chunk.ids,
            logged,
            source=f"log:{stream.logged_column}",
            task=stream.task,
            checkpoint_sha256=expected,
            data_fingerprint=chunk.fingerprint,
        )
        return expected
    served = probabilities(
        predict_logits(previous.model, chunk, stream.task, settings.eval_batch_size), stream.task
    )
    store.write(
        version,
        chunk.ids,
        served.numpy(),
        task=stream.task,
        checkpoint_sha256=previous.checkpoint_sha256,
        data_fingerprint=chunk.fingerprint,
        source=f"model v{version}",
    )
    return previous.checkpoint_sha256


def check_reference_source(stream: Stream, settings: LoopSettings) -> None:
    """ValueError if ``settings.reference_from`` asks for logged predictions ``stream`` lacks."""
    if settings.reference_from == "log" and stream.logged_column is None:
        raise ValueError(
            f"reference_from='log' needs a stream with logged predictions, but {stream.name!r} "
            "has none; name the column (loop.stream.prediction_column=<column>, CTR log "
            "streams) or use reference_from=model"
        )


def check_versions(versions: Any, num_chunks: int | None = None) -> int:
    """``versions`` if it is an int in ``2..num_chunks`` (``num_chunks`` None: not yet
    known); ValueError naming the value and what is allowed otherwise."""
    why = (
        "v1 is trained on chunk 1 with hard labels and the compared method trains v2..vN, "
        "version t on chunk t"
    )
    if isinstance(versions, bool) or not isinstance(versions, int) or versions < 2:
        upper = "" if num_chunks is None else f" and at most {num_chunks} (the stream's chunks)"
        raise ValueError(f"versions={versions!r}; allowed: an integer >= 2{upper} ({why})")
    if num_chunks is not None and versions > num_chunks:
        if num_chunks < 2:
            raise ValueError(
                f"versions={versions}: the stream has {num_chunks} chunk, but the loop needs "
                f"at least 2 ({why}); use a stream with more chunks (days)"
            )
        allowed = "2" if num_chunks == 2 else f"an integer from 2 to {num_chunks}"
        raise ValueError(
            f"versions={versions}; allowed: {allowed}, since the stream has {num_chunks} "
            f"chunks ({why}); use fewer versions or a stream with more chunks"
        )
    return versions


def _seed_for(seed: int, number: int) -> int:
    return seed * 100_003 + number


def train_first_version(
    stream: Stream,
    make_model: Callable[[], nn.Module],
    settings: LoopSettings,
    *,
    seed: int,
    out_dir: Path,
) -> Version:
    """``v1``: a fresh model trained on chunk 1 with hard labels, evaluated on chunk 2."""
    out_dir = Path(out_dir)
    torch.manual_seed(_seed_for(seed, 1))
    student = make_model()
    checkpoint, sha, elapsed = _train_version(
        number=1,
        stream=stream,
        student=student,
        source_name="hard",
        provider=None,
        settings=settings,
        out_dir=out_dir,
        seed=_seed_for(seed, 1),
    )
    row = {
        "seed": seed,
        "version": 1,
        "train_chunk": stream.chunks[0].name,
        "target": "hard",
        "reference": "",
        "warm_start": False,
        "train_samples": len(stream.chunks[0]),
        "train_time_s": round(elapsed, 3),
        "checkpoint_sha256": sha,
        **_evaluate(stream, 1, student, None, settings.eval_batch_size),
    }
    return Version(1, student, checkpoint, sha, row)


def run_method(
    stream: Stream,
    make_model: Callable[[], nn.Module],
    settings: LoopSettings,
    *,
    method: str,
    versions: int,
    seed: int,
    out_dir: Path,
    first: Version,
) -> list[dict[str, Any]]:
    """Train ``v2..v{versions}`` with ``method`` after ``first``; return one row per version (v1 included)."""
    from softlabel.loop.references import StoredPredictions
    from softlabel.modules import LiveTeacher, load_weights

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    check_versions(versions, len(stream.chunks))
    check_reference_source(stream, settings)
    out_dir = Path(out_dir)
    store = PredictionStore(out_dir / "store")
    rows = [{"method": method, **first.row}]
    previous = first
    for number in range(2, versions + 1):
        chunk = stream.chunks[number - 1]
        reference_sha = _fill_store(store, number - 1, chunk, stream, previous, settings)
        torch.manual_seed(_seed_for(seed, number))
        student = make_model()
        if settings.warm_start:
            load_weights(student, previous.checkpoint, role="previous")
        provider = None
        if method == "reloop":
            provider = StoredPredictions(
                store,
                number - 1,
                checkpoint_sha256=reference_sha,
                data_fingerprint=chunk.fingerprint,
                task=stream.task,
            )
        elif method == "kd":
            provider = LiveTeacher(load_weights(make_model(), previous.checkpoint, role="teacher"))
        checkpoint, sha, elapsed = _train_version(
            number=number,
            stream=stream,
            student=student,
            source_name=SOURCE_FOR_METHOD[method],
            provider=provider,
            settings=settings,
            out_dir=out_dir,
            seed=_seed_for(seed, number),
        )
        row = {
            "method": method,
            "seed": seed,
            "version": number,
            "train_chunk": chunk.name,
            "target": method,
            "reference": store.manifest(number - 1).source if method == "reloop" else "",
            "warm_start": settings.warm_start,
            "train_samples": len(chunk),
            "train_time_s": round(elapsed, 3),
            "checkpoint_sha256": sha,
            **_evaluate(stream, number, student, previous.model, settings.eval_batch_size),
        }
        rows.append(row)
        previous = Version(number, student, checkpoint, sha, row)
    return rows
