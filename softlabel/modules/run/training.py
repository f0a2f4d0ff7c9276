"""One training run: check the settings, build everything from the config, fit, evaluate
the last and the best-on-val weights, and write the run's record."""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from softlabel.modules.build import (
    build_datamodule,
    build_loss,
    build_model,
    build_module,
    build_reference_provider,
    is_causal_lm,
    lm_generation,
)
from softlabel.modules.cross_tokenizer import set_vocabulary_map
from softlabel.modules.metrics import monitor_for
from softlabel.modules.run.checks import (
    check_hf_model_entry,
    check_monitors,
    check_run_length,
    check_sharding,
    check_splits,
    check_threads,
)
from softlabel.modules.run.outputs import (
    HF_MODEL_DIR,
    METRICS_FILE,
    PREDICTIONS_FILE,
    PREDICTIONS_LAST_FILE,
    metrics_record,
    save_hf_model,
    save_test_predictions,
    write_json_atomic,
)
from softlabel.modules.run.resume import read_resume_checkpoint
from softlabel.modules.run.trainer import build_logger, build_trainer
from softlabel.modules.rundir import HydraFiles, RunLock, is_launch_rank_zero
from softlabel.modules.sharding import full_state_dict, is_sharded

__all__ = ["run_training"]


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
        threads = check_threads(cfg)
        check_run_length(cfg)
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


def _scalars(results: list[dict[str, Any]]) -> dict[str, float]:
    merged: dict[str, float] = {}
    for result in results:
        merged.update({k: float(v) for k, v in result.items()})
    return dict(sorted(merged.items()))


def _evaluate(
    trainer: L.Trainer, module: Any, datamodule: Any, ckpt_path: str | None
) -> dict[str, float]:
    """val + test metrics of the module's weights, or of ``ckpt_path`` when given."""
    val = trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    test = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    return _scalars(val + test)


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
    lm = is_causal_lm(datamodule)
    if lm:  # a text split is checked by its datamodule (in blocks)
        if cfg.get("save_predictions"):
            raise ValueError(
                "save_predictions=true writes class probabilities per sample; a causal-LM run "
                f"has none: leave save_predictions=false (the model is saved in {HF_MODEL_DIR}/)"
            )
        check_hf_model_entry(output_dir, HF_MODEL_DIR)
        generation = lm_generation(cfg, datamodule)  # checked before any model is built
    else:
        check_splits(cfg, datamodule)
        generation = {}
    loss = build_loss(cfg, datamodule)
    student = build_model(cfg.student, datamodule)
    provider, reference_record = build_reference_provider(
        cfg, loss.source.reference, datamodule, student
    )
    if lm:  # the hybrid ULD's tokens of both vocabularies, from the two tokenizers
        set_vocabulary_map(loss.source, provider, datamodule)
    seq_kd_teacher = None
    if generation.get("seq_kd") and provider is None:  # e.g. target=hard: Kim and Rush
        teacher, teacher_record = build_reference_provider(
            cfg, "teacher_logits", datamodule, student
        )
        seq_kd_teacher = getattr(teacher, "model", None)
        reference_record = {**reference_record, **teacher_record}
    module = build_module(cfg, datamodule, student, loss, provider, seq_kd_teacher=seq_kd_teacher)
    monitor = cfg.get("monitor") or ("val/nll" if lm else monitor_for(datamodule.task))
    check_monitors(cfg, monitor, module)
    ckpt_path, resume_step = None, None
    if cfg.get("ckpt_path"):
        ckpt_path, resume_step = read_resume_checkpoint(cfg, module)

    logger = build_logger(cfg, output_dir, resume_step)
    run.logger, run.hparams = logger, OmegaConf.to_container(cfg, resolve=True)
    trainer = build_trainer(cfg, output_dir, monitor, logger, run.mark)
    check_sharding(trainer, module)
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

    record = metrics_record(
        cfg,
        start=start,
        trainer=trainer,
        datamodule=datamodule,
        student=student,
        source=loss.source,
        monitor=monitor,
        last=last,
        best=best,
        best_path=best_path,
        output_dir=output_dir,
        reference_record=reference_record,
    )
    if getattr(module, "generation", None) is not None:
        record["generation_time_s"] = round(float(module.generation_time_s), 3)
    # a sharded student is gathered by every rank, then written by rank 0 (None: as it is)
    weights = full_state_dict(student) if lm and is_sharded(student) else None
    if lm and trainer.is_global_zero:
        # the module holds the val-selected weights here (see below), else the final ones
        hf_dir = os.path.join(output_dir, HF_MODEL_DIR)
        tokenizer = getattr(datamodule, "text_tokenizer", None)  # byte-level or Hugging Face
        if save_hf_model(student, tokenizer, hf_dir, state_dict=weights):
            record["hf_model"] = {"dir": HF_MODEL_DIR, "weights": "best" if best else "last"}
    if trainer.is_global_zero:
        if save_predictions:
            # The module holds the val-selected weights here (the last evaluation loaded
            # best.ckpt, or there is none and they are the final weights).
            save_test_predictions(module, datamodule, os.path.join(output_dir, PREDICTIONS_FILE))
            record["predictions"] = {"best": PREDICTIONS_FILE, "last": PREDICTIONS_LAST_FILE}
        write_json_atomic(os.path.join(output_dir, METRICS_FILE), record)
    return record
