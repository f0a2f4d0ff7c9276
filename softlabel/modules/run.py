"""One training run: build everything from the config, fit, evaluate last and best, report."""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from softlabel._io import atomic_write, atomic_write_json
from softlabel.modules.build import (
    absolute_path,
    build_datamodule,
    build_loss,
    build_model,
    build_reference_provider,
    scheduler_parts,
)
from softlabel.modules.metrics import monitor_for
from softlabel.modules.rundir import HydraFiles, ResumableCSVLogger, RunLock, is_launch_rank_zero
from softlabel.modules.soft_label_module import SoftLabelModule

__all__ = [
    "CHECKPOINT_DIR",
    "METRICS_FILE",
    "PREDICTIONS_FILE",
    "PREDICTIONS_LAST_FILE",
    "run_training",
    "save_test_predictions",
    "write_json_atomic",
]

METRICS_FILE = "metrics.json"
LM_TASK = "causal_lm"
PREDICTIONS_FILE = "predictions_test.npz"  # the val-selected weights
PREDICTIONS_LAST_FILE = "predictions_test_last.npz"  # the final weights
CHECKPOINT_DIR = "checkpoints"


def _silence_known_warnings() -> None:
    # Worker count is a deliberate config choice (data.num_workers), not an oversight:
    # the small in-memory datasets load fastest in the main process.
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    # Frozen teachers / previous models are kept in eval mode on purpose (see references.py).
    warnings.filterwarnings(
        "ignore", message=r".*module\(s\) in eval mode at the start of training.*"
    )
    # Raised inside Lightning's own pytree helper with newer torch; nothing a user can change.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def write_json_atomic(path: str, payload: dict[str, Any]) -> None:
    """Write ``payload`` as JSON to ``path`` atomically."""
    atomic_write_json(path, payload)


@torch.no_grad()
def save_test_predictions(module: SoftLabelModule, datamodule: Any, path: str) -> None:
    """Write the module's test-split probabilities to ``path`` (``.npz``, atomically):
    ``probs`` (N, K) softmax, or (N,) P(y=1) for binary; ``target`` (N,); ``index`` (N,)."""
    was_training = module.training
    module.eval()
    probs, target, index = [], [], []
    for x, y, idx in datamodule.test_dataloader():
        out = module.predict_step((x.to(module.device), y, idx), 0)
        probs.append(out["probs"].float().cpu())
        target.append(y)
        index.append(idx)
    module.train(was_training)
    arrays = {
        "probs": torch.cat(probs).numpy(),
        "target": torch.cat(target).long().numpy(),
        "index": torch.cat(index).long().numpy(),
    }
    atomic_write(path, lambda tmp: np.savez(tmp, **arrays))


def _choice(group: str, fallback: str) -> str:
    """The option chosen for a config group (``student=mlp`` -> ``"mlp"``), when Hydra runs."""
    try:
        from hydra.core.hydra_config import HydraConfig

        value = HydraConfig.get().runtime.choices.get(group)
    except ValueError:
        value = None
    return str(value) if value else fallback


def _build_callbacks(cfg: DictConfig, output_dir: str, monitor: str) -> list[Any]:
    callbacks = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None or "_target_" not in node:
            continue
        extra: dict[str, Any] = {}
        if str(node._target_).endswith("ModelCheckpoint"):
            if node.get("dirpath") is None:
                extra["dirpath"] = os.path.join(output_dir, CHECKPOINT_DIR)
            if node.get("monitor") is None:
                extra["monitor"] = monitor
        try:
            callbacks.append(instantiate(node, **extra))
        except Exception as error:
            raise ValueError(f"callbacks.{name} could not be built: {error}") from error
    return callbacks


def _build_logger(cfg: DictConfig, output_dir: str, resume_step: int | None) -> Any:
    """The configured logger; Lightning's ``CSVLogger`` becomes :class:`ResumableCSVLogger`,
    which keeps the rows before ``resume_step`` and touches nothing before training logs."""
    from hydra.utils import get_class
    from lightning.pytorch.loggers import CSVLogger

    node = cfg.get("logger")
    if node is None or "_target_" not in node:
        return False
    extra: dict[str, Any] = {"save_dir": output_dir} if node.get("save_dir") is None else {}
    try:
        is_csv = get_class(str(node._target_)) is CSVLogger
    except Exception:  # noqa: BLE001 - instantiate below reports a bad target
        is_csv = False
    if is_csv:
        params = OmegaConf.to_container(node, resolve=True)
        assert isinstance(params, dict)
        params["_target_"] = f"{ResumableCSVLogger.__module__}.{ResumableCSVLogger.__name__}"
        return instantiate(params, resume_step=resume_step, **extra)
    return instantiate(node, **extra)


class _OnTrainStart(L.Callback):
    """Calls ``action()`` once, when training starts (after Lightning restored a resumed
    run's state and before the first batch)."""

    def __init__(self, action: Any) -> None:
        super().__init__()
        self.action = action

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.action()


# ------------------------------------------------------------------------------ checks
def _check_threads(cfg: DictConfig) -> int | None:
    value = cfg.get("threads")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"threads={value!r}; allowed: null (torch's default thread count) or an integer "
            ">= 1 (torch.set_num_threads), e.g. threads=1"
        )
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_run_length(cfg: DictConfig) -> None:
    """Refuse trainer settings that train nothing or never stop."""
    node = cfg.get("trainer") or {}
    if node.get("fast_dev_run"):
        return  # Lightning runs fast_dev_run batches whatever the limits say
    max_epochs = node.get("max_epochs")
    max_steps = node.get("max_steps", -1)
    max_steps = -1 if max_steps is None else max_steps
    if max_epochs is not None and (not _is_int(max_epochs) or max_epochs < -1 or max_epochs == 0):
        raise ValueError(
            f"trainer.max_epochs={max_epochs!r}"
            + (
                " trains nothing (metrics.json would describe the untrained model)"
                if max_epochs == 0
                else ""
            )
            + "; allowed: an integer >= 1, or -1 (no epoch limit) together with "
            "trainer.max_steps >= 1 or trainer.max_time"
        )
    if not _is_int(max_steps) or max_steps < -1 or max_steps == 0:
        raise ValueError(
            f"trainer.max_steps={max_steps!r}"
            + (" trains nothing" if max_steps == 0 else "")
            + "; allowed: -1 (no step limit) or an integer >= 1"
        )
    if max_epochs == -1 and max_steps == -1 and not node.get("max_time"):
        raise ValueError(
            "trainer.max_epochs=-1 with trainer.max_steps=-1 and no trainer.max_time never "
            "stops: set trainer.max_epochs to an integer >= 1, or bound the run with "
            "trainer.max_steps=N or trainer.max_time=DD:HH:MM:SS"
        )
    limit = node.get("limit_train_batches")
    if limit is not None and not isinstance(limit, bool) and limit == 0:
        raise ValueError(
            f"trainer.limit_train_batches={limit!r} trains nothing; allowed: null (every "
            "batch), a fraction in (0, 1] or an integer >= 1"
        )


def _smallest_subset(datamodule: Any, need: int) -> int | None:
    """The smallest ``data.subset`` giving every split at least ``need`` samples, for a
    source without an official test split (None otherwise or if there is none)."""
    source = getattr(datamodule, "source", None)
    fractions = (
        getattr(datamodule, "val_fraction", None),
        getattr(datamodule, "test_fraction", None),
    )
    if source is None or getattr(source, "test_index", None) is not None or None in fractions:
        return None
    val, test = float(fractions[0]), float(fractions[1])
    for n in range(1, len(source) + 1):
        n_test, n_val = round(test * n), round(val * n)
        if min(n_test, n_val, n - n_test - n_val) >= need:
            return n
    return None


def _check_splits(cfg: DictConfig, datamodule: Any) -> None:
    """Refuse splits too small to hold one sample per class: training, model selection and
    the reported metrics would mean nothing (e.g. ``data.subset=5`` on 10 classes)."""
    split = getattr(datamodule, "split", None)
    if split is None:
        return
    sizes = {name: len(getattr(split, name)) for name in ("train", "val", "test")}
    need = int(getattr(datamodule, "num_labels", 2))
    if min(sizes.values()) >= need:
        return
    shown = ", ".join(f"{k}={v}" for k, v in sizes.items())
    message = (
        f"the data splits are too small: {shown} samples, but each split needs at least "
        f"{need} (one per class of this {need}-class task) for training, model selection "
        "and the reported metrics to mean anything"
    )
    subset = (cfg.get("data") or {}).get("subset")
    if subset is not None:
        smallest = _smallest_subset(datamodule, need)
        allowed = f"an integer >= {smallest}" if smallest else "a larger integer"
        total = len(datamodule.source) if hasattr(datamodule, "source") else None
        every = f"all {total} samples" if total else "all samples"
        message += f"; data.subset={subset!r} is too small: allowed: null ({every}) or {allowed}"
    else:
        message += "; use a larger dataset or other data.val_fraction / data.test_fraction"
    raise ValueError(message)


_HIGHER_IS_BETTER = {"acc", "acc_top5", "auroc"}
_LOWER_IS_BETTER = {"nll", "ece", "logloss", "loss", "loss_step", "loss_epoch"}


def _check_monitors(cfg: DictConfig, monitor: str, module: SoftLabelModule) -> None:
    """Every monitored key (``monitor`` and each callback's ``monitor``) must be a metric the
    module logs, and a callback's ``mode`` must point the metric's better way."""
    allowed = module.monitor_keys()
    checks: list[tuple[str, Any, str | None, Any]] = [("monitor", monitor, None, None)]
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None or "_target_" not in node or "monitor" not in node:
            continue
        value = node.get("monitor")
        if value is None and str(node._target_).endswith("ModelCheckpoint"):
            value = monitor  # filled in by _build_callbacks
        if value is None:
            continue
        label = "monitor" if value == cfg.get("monitor") else f"callbacks.{name}.monitor"
        checks.append((label, value, f"callbacks.{name}.mode", node.get("mode")))
    for label, value, mode_label, mode in checks:
        if not isinstance(value, str) or value not in allowed:
            raise ValueError(
                f"{label}={value!r} is not a metric this run logs; allowed: {', '.join(allowed)}"
            )
        metric = value.split("/", 1)[-1]
        if mode_label is None or mode not in ("min", "max"):
            continue
        if (mode == "min" and metric in _HIGHER_IS_BETTER) or (
            mode == "max" and metric in _LOWER_IS_BETTER
        ):
            better = "max" if mode == "min" else "min"
            raise ValueError(
                f"{mode_label}={mode} with {label}={value}: it would keep the "
                f"{'lowest' if mode == 'min' else 'highest'} {value}, but "
                f"{'higher' if better == 'max' else 'lower'} is better; set {mode_label}={better}"
            )


def _read_resume_checkpoint(cfg: DictConfig, module: SoftLabelModule) -> tuple[str, int]:
    """``(path, global_step)`` of ``cfg.ckpt_path`` after checking that it can resume this
    run: readable, a full Lightning training checkpoint, with student weights that fit."""
    from softlabel.modules.soft_label_module import PROVIDER_PREFIX

    given = cfg.ckpt_path
    path = absolute_path(given)
    if os.path.isdir(path):
        inside = os.path.join(path, CHECKPOINT_DIR, "last.ckpt")
        hint = f"; did you mean ckpt_path={inside}?" if os.path.isfile(inside) else ""
        raise IsADirectoryError(
            f"ckpt_path={given!r}: {path!r} is a directory, not a checkpoint file{hint}"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ckpt_path not found: {path!r} (from ckpt_path={given!r})")
    try:
        # torch's weights-only loader, as Lightning reads it: a file that would run code
        # when unpickled is refused here, before Lightning sees it
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure means the run cannot resume
        reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        raise ValueError(
            f"ckpt_path={given!r}: {path!r} could not be read as a checkpoint "
            f"({type(error).__name__}: {reason}); point ckpt_path at an intact checkpoint "
            "of the interrupted run, e.g. <run dir>/checkpoints/last.ckpt"
        ) from error
    needed = ("state_dict", "loops", "epoch", "global_step")
    if not isinstance(checkpoint, dict) or any(k not in checkpoint for k in needed):
        keys = sorted(map(str, checkpoint))[:8] if isinstance(checkpoint, dict) else []
        raise ValueError(
            f"ckpt_path={given!r}: {path!r} is not a Lightning training checkpoint "
            f"(needs {list(needed)}, has {keys or type(checkpoint).__name__}); ckpt_path "
            "resumes a softlabel-train run from its checkpoints/last.ckpt (to learn from a "
            "trained model use teacher.checkpoint or previous.checkpoint)"
        )
    if "optimizer_states" not in checkpoint or "lr_schedulers" not in checkpoint:
        raise ValueError(
            f"ckpt_path={given!r}: {path!r} holds model weights only (no optimizer or "
            "scheduler state, e.g. written with save_weights_only=true), so it cannot resume "
            "a run; use the run's checkpoints/last.ckpt"
        )
    state = checkpoint["state_dict"]
    expected = {k: v for k, v in module.state_dict().items() if not k.startswith(PROVIDER_PREFIX)}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        problems = [
            f"{what}: {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
            for what, items in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", mismatched),
            )
            if items
        ]
        raise ValueError(
            f"ckpt_path={given!r}: the checkpoint's weights do not fit the configured student "
            f"({'; '.join(problems)}); resume with the interrupted run's student and data "
            "overrides"
        )
    return path, int(checkpoint["global_step"])


def _scalars(results: list[dict[str, Any]]) -> dict[str, float]:
    merged: dict[str, float] = {}
    for result in results:
        merged.update({k: float(v) for k, v in result.items()})
    return dict(sorted(merged.items()))


def _evaluate(
    trainer: L.Trainer, module: SoftLabelModule, datamodule: Any, ckpt_path: str | None
) -> dict[str, float]:
    """val + test metrics of the module's weights, or of ``ckpt_path`` when given."""
    val = trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    test = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    return _scalars(val + test)


def _target_record(cfg: DictConfig, source: Any, method: str) -> dict[str, Any]:
    params = OmegaConf.to_container(cfg.target, resolve=True)
    assert isinstance(params, dict)
    params.pop("_target_", None)
    name = getattr(source, "name", None) or method
    return {"name": str(name), **params}


def run_training(cfg: DictConfig, output_dir: str) -> dict[str, Any]:
    """Fit the configured student, evaluate the last and the best-on-val weights, and write
    ``metrics.json`` in ``output_dir``. Returns the metrics record.

    Everything is checked before anything in ``output_dir`` changes: a refused run (bad
    setting, unusable ``ckpt_path``, directory locked by another live run) leaves the
    directory as it was, Hydra's ``.hydra`` files included.
    """
    _silence_known_warnings()
    start = (time.perf_counter(), time.process_time())
    output_dir = os.fspath(output_dir)
    rank_zero = is_launch_rank_zero()
    run = _RunStart(HydraFiles(output_dir, enabled=rank_zero))
    lock = RunLock(output_dir)
    try:
        threads = _check_threads(cfg)
        _check_run_length(cfg)
        if rank_zero:
            lock.acquire()
        return _train(cfg, output_dir, start, threads, run)
    except BaseException:
        if not run.started:
            run.hydra_files.restore()
        raise
    finally:
        lock.release()


class _RunStart:
    """Whether training started; the first :meth:`mark` makes the directory this run's
    (its ``.hydra`` files, the logger's hyper-parameters)."""

    def __init__(self, hydra_files: HydraFiles) -> None:
        self.hydra_files = hydra_files
        self.started = False
        self.logger: Any = False
        self.hparams: dict[str, Any] | None = None

    def mark(self) -> None:
        if self.started:
            return
        self.started = True
        self.hydra_files.accept()
        if self.logger:
            self.logger.log_hyperparams(self.hparams)


def _train(
    cfg: DictConfig,
    output_dir: str,
    start: tuple[float, float],
    threads: int | None,
    run: _RunStart,
) -> dict[str, Any]:
    if threads is not None:
        torch.set_num_threads(threads)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)

    datamodule = build_datamodule(cfg)
    if datamodule.task != LM_TASK:  # a text split is checked by its datamodule (in blocks)
        _check_splits(cfg, datamodule)
    loss = build_loss(cfg, datamodule)
    source = loss.source
    optimizer = instantiate(cfg.optimizer, _partial_=True)
    scheduler, interval = scheduler_parts(cfg)
    task = datamodule.task
    if task == LM_TASK:
        module, reference_record = _lm_module(cfg, datamodule, loss, optimizer, scheduler, interval)
        student = module.student
    else:
        provider, reference_record = build_reference_provider(cfg, source.reference, datamodule)
        student = build_model(cfg.student, datamodule)
        module = SoftLabelModule(
            student,
            loss,
            optimizer=optimizer,
            scheduler=scheduler,
            scheduler_interval=interval,
            reference_provider=provider,
            task=task,
            num_classes=1 if task == "binary" else int(datamodule.num_classes),
        )
    monitor = cfg.get("monitor") or ("val/nll" if task == LM_TASK else monitor_for(task))
    _check_monitors(cfg, monitor, module)
    ckpt_path, resume_step = None, None
    if cfg.get("ckpt_path"):
        ckpt_path, resume_step = _read_resume_checkpoint(cfg, module)

    logger = _build_logger(cfg, output_dir, resume_step)
    run.logger, run.hparams = logger, OmegaConf.to_container(cfg, resolve=True)
    callbacks = [*_build_callbacks(cfg, output_dir, monitor), _OnTrainStart(run.mark)]
    trainer: L.Trainer = instantiate(
        cfg.trainer, logger=logger, callbacks=callbacks, default_root_dir=output_dir
    )
    # Lightning restores a resumed run's state inside fit; the module refuses a schedule of
    # another length there, before training starts and before anything is written.
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    run.mark()  # also when a resumed run had nothing left to train

    last = _evaluate(trainer, module, datamodule, None)
    save_predictions = bool(cfg.get("save_predictions")) and trainer.is_global_zero
    if save_predictions:  # the module holds the final weights here
        last_path = os.path.join(output_dir, PREDICTIONS_LAST_FILE)
        save_test_predictions(module, datamodule, last_path)
    best: dict[str, Any] | None = None
    best_path = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
    if best_path and os.path.isfile(best_path):
        epoch = torch.load(best_path, map_location="cpu", weights_only=True).get("epoch")
        best = {"epoch": epoch, **_evaluate(trainer, module, datamodule, best_path)}

    method = cfg.get("method") or _choice("target", str(getattr(source, "name", "")))
    record: dict[str, Any] = {
        "method": str(method),
        "seed": int(cfg.seed),
        "task": task,
        "wall_time_s": round(time.perf_counter() - start[0], 3),
        # CPU seconds of this process (all its threads): unlike the wall time, barely
        # changed by other jobs sharing the cores
        "cpu_time_s": round(time.process_time() - start[1], 3),
        "data": str(getattr(datamodule, "name", _choice("data", "data"))),
        "student": _choice("student", type(student).__name__),
        "target": _target_record(cfg, source, str(method)),
        "last": last,
        "best": best,
        "monitor": monitor,
        "best_checkpoint": os.path.relpath(best_path, output_dir) if best else None,
        **reference_record,
        "label_noise": getattr(datamodule, "noise_report", None),
        "num_params": sum(p.numel() for p in student.parameters()),
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "data_fingerprint": getattr(datamodule, "fingerprint", None),
    }
    if task == LM_TASK and trainer.is_global_zero:
        from softlabel.modules.lm_build import HF_MODEL_DIR, save_hf_model

        # the module holds the val-selected weights here (see below), else the final ones
        hf_dir = os.path.join(output_dir, HF_MODEL_DIR)
        tokenizer = getattr(datamodule, "text_tokenizer", None)  # byte-level or Hugging Face
        if save_hf_model(student, tokenizer, hf_dir):
            record["hf_model"] = {"dir": HF_MODEL_DIR, "weights": "best" if best else "last"}
    if trainer.is_global_zero:
        if save_predictions:
            # The module holds the val-selected weights here (the last evaluation loaded
            # best.ckpt, or there is none and they are the final weights).
            save_test_predictions(module, datamodule, os.path.join(output_dir, PREDICTIONS_FILE))
            record["predictions"] = {"best": PREDICTIONS_FILE, "last": PREDICTIONS_LAST_FILE}
        write_json_atomic(os.path.join(output_dir, METRICS_FILE), _jsonable(record))
    return record


def _lm_module(
    cfg: DictConfig, datamodule: Any, loss: Any, optimizer: Any, scheduler: Any, interval: str
) -> tuple[Any, dict[str, Any]]:
    """The ``CausalLMModule`` of a ``data=text`` run and what to record of its references."""
    from softlabel.modules.lm_build import build_lm_model, build_lm_reference_provider
    from softlabel.modules.lm_module import CausalLMModule

    if cfg.get("save_predictions"):
        raise ValueError(
            "save_predictions=true writes class probabilities per sample; a causal-LM run "
            "has none: leave save_predictions=false (the model is saved in hf_model/)"
        )
    student = build_lm_model(cfg.student, datamodule)
    provider, record = build_lm_reference_provider(cfg, loss.source.reference, datamodule, student)
    lm = cfg.get("lm") or {}
    module = CausalLMModule(
        student,
        loss,
        optimizer=optimizer,
        scheduler=scheduler,
        scheduler_interval=interval,
        reference_provider=provider,
        vocab_size=int(getattr(student, "vocab_size", datamodule.vocab_size)),
        linear_head=bool(lm.get("linear_head", True)),
        chunk_rows=lm.get("chunk_rows"),
    )
    return module, record


def _jsonable(value: Any) -> Any:
    """``value`` with numpy/torch scalars and tuples turned into plain JSON types."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "__dict__"):
        return _jsonable(vars(value))
    return str(value)
