"""``softlabel-cache``: run a teacher once over a dataset and store its logits by index.

    softlabel-cache data=digits teacher=mlp_large teacher.checkpoint=PATH out=caches/digits
    softlabel-cache data=digits teacher=mlp_large teacher.checkpoint=PATH out=DIR kind=topk k=10

Torch, Lightning and the data/model code are imported inside the job, so ``--help``
answers at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from softlabel._conf import CONF_DIR
from softlabel._hydra_app import hydra_app

__all__ = ["CONF_DIR", "build_cache", "main"]


def _required(cfg: DictConfig, key: str, hint: str) -> Any:
    """``cfg[key]``, or a ValueError naming the key when it is missing or null."""
    if OmegaConf.is_missing(cfg, key) or cfg.get(key) is None:
        raise ValueError(f"{key} is not set: {hint}")
    return cfg[key]


def _check_options(cfg: DictConfig) -> int | None:
    """Fail on bad options before the data and the teacher are loaded; returns ``threads``."""
    from softlabel._threads import check_threads
    from softlabel.cache.format import KINDS, VALUE_DTYPES

    if cfg.kind not in KINDS:
        raise ValueError(f"kind={cfg.kind!r} is not allowed; use one of {KINDS}")
    if cfg.dtype not in VALUE_DTYPES:
        raise ValueError(f"dtype={cfg.dtype!r} is not allowed; use one of {VALUE_DTYPES}")
    if cfg.kind == "topk" and (not isinstance(cfg.k, int) or cfg.k < 1):
        raise ValueError(f"k={cfg.k!r} must be a positive integer for kind=topk")
    if not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        raise ValueError(f"batch_size={cfg.batch_size!r} must be a positive integer")
    return check_threads(cfg)


def _check_teacher(cfg: DictConfig) -> None:
    """The teacher config must name a teacher model (``live_teacher``), not a cache."""
    from hydra.utils import get_object

    from softlabel.modules.providers import live_teacher

    target = (cfg.get("teacher") or {}).get("_target_")
    if target is None or get_object(str(target)) is not live_teacher:
        raise ValueError(
            f"teacher._target_={target!r}: softlabel-cache runs a teacher model, e.g. "
            "teacher=mlp_large teacher.checkpoint=PATH (or teacher=hf_causal_lm "
            "teacher.pretrained=DIR), not teacher=cached or teacher=none"
        )


def build_cache(cfg: DictConfig) -> Path:
    """Run ``cfg.teacher`` over every index of ``cfg.data`` and write the cache at ``cfg.out``:
    one row of K logits per item, or for ``data=text`` a row of shape (block_size, V) per
    block (dense), or the top-k ids, their log-probabilities and the log tail mass."""
    _check_teacher(cfg)
    out = _required(cfg, "out", "give out=DIR, the cache directory to write")
    threads = _check_options(cfg)

    import torch

    from softlabel.modules.build import (
        absolute_path,
        build_datamodule,
        build_reference_provider,
        is_causal_lm,
    )
    from softlabel.modules.cross_tokenizer import has_other_vocabulary
    from softlabel.modules.frozen import output_rows

    if threads is not None:
        torch.set_num_threads(threads)
    out_path = Path(absolute_path(out))
    datamodule = build_datamodule(cfg)
    lm = is_causal_lm(datamodule)
    if not lm and datamodule.task != "multiclass":
        raise ValueError(
            f"data task={datamodule.task!r}: a teacher cache holds multiclass logits (K >= 2)"
        )
    provider, record = build_reference_provider(cfg, "teacher_logits", datamodule)
    assert provider is not None
    teacher = provider.model
    device = torch.device(cfg.device)
    provider.to(device).eval()

    recorded = OmegaConf.to_container(cfg.teacher, resolve=True)
    assert isinstance(recorded, dict)
    for key in ("checkpoint", "pretrained", "tokenizer"):  # made absolute
        if f"teacher_{key}" in record:
            recorded[key] = record[f"teacher_{key}"]
    alignment = None
    num_classes, teacher_rows = int(datamodule.num_classes), None
    if has_other_vocabulary(provider):  # rows of the teacher's vocabulary at the data's positions
        student_fp, teacher_fp = provider.aligner.identities
        alignment = {
            "student_tokenizer": student_fp,
            "teacher_tokenizer": teacher_fp,
            "data.tokenizer": str(cfg.data.get("tokenizer") or "null"),
            "teacher.tokenizer": record["teacher_tokenizer"],
            **{k: record["teacher_alignment"][k] for k in ("scored", "aligned")},
        }
        num_classes = output_rows(teacher)  # rows of the teacher's own vocabulary
    elif lm:  # a padded teacher vocabulary: its first data-vocabulary logits, as the live path
        from softlabel.models.hf import check_vocabularies

        teacher_rows = output_rows(teacher)
        vocab = int(datamodule.vocab_size)
        num_classes = check_vocabularies(vocab, teacher_rows, vocab)
    return _write(
        cfg,
        out_path,
        datamodule,
        provider,
        device,
        num_classes,
        record["teacher_sha256"],
        recorded,
        row_shape=tuple(datamodule.input_shape) if lm else (),
        alignment=alignment,
        teacher_classes=teacher_rows,
    )


def _write(
    cfg: DictConfig,
    out_path: Path,
    datamodule: Any,
    provider: Any,
    device: Any,
    num_classes: int,
    teacher_sha256: str,
    recorded: dict[str, Any],
    row_shape: tuple[int, ...] = (),
    alignment: dict[str, Any] | None = None,
    teacher_classes: int | None = None,
) -> Path:
    """Run the teacher ``provider`` over every item of ``datamodule.full_dataset()`` (in
    index order) and commit its outputs as the cache at ``out_path`` (with ``alignment``:
    a teacher with another tokenizer, its rows at the data's positions and where it has
    them)."""
    import torch
    from rich.progress import track
    from torch.utils.data import DataLoader

    from softlabel.cache.guards import inputs_fingerprint
    from softlabel.cache.writer import CacheWriter

    dataset = datamodule.full_dataset()
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False)
    with CacheWriter(
        out_path,
        kind=cfg.kind,
        num_samples=len(dataset),
        num_classes=num_classes,
        k=int(cfg.k) if cfg.kind == "topk" else None,
        dtype=cfg.dtype,
        fingerprint=datamodule.fingerprint,
        teacher_sha256=teacher_sha256,
        teacher_config=recorded,
        inputs_fingerprint=inputs_fingerprint(datamodule),
        overwrite=bool(cfg.overwrite),
        row_shape=row_shape,
        alignment=alignment,
        teacher_classes=teacher_classes,
    ) as writer:
        batches = track(
            loader, total=len(loader), description="teacher logits", disable=not cfg.progress
        )
        with torch.inference_mode():
            for x, _, index in batches:
                x = x.to(device)
                logits = provider(x, index.to(device)).float().cpu()
                aligned = None if alignment is None else provider.aligned(x, index).cpu()
                writer.write(index, logits, aligned)
        return writer.commit()


def _job(cfg: DictConfig) -> None:
    """The Hydra task: write the cache and print what was written."""
    from softlabel.cache.reader import TeacherCache

    cache = TeacherCache.open(build_cache(cfg))
    print(f"wrote {cache!r}: {cache.nbytes} bytes")


main = hydra_app(_job, config_name="cache")
"""Console entry point ``softlabel-cache``: the config checked (unknown keys refused), then
the Hydra app (conf/cache.yaml)."""


if __name__ == "__main__":
    main()
