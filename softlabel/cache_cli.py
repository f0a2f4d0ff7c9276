"""``softlabel-cache``: run a teacher once over a dataset and store its logits by index.

    softlabel-cache data=digits teacher=mlp_large teacher.checkpoint=PATH out=caches/digits
    softlabel-cache data=digits teacher=mlp_large teacher.checkpoint=PATH out=DIR kind=topk k=10

Torch, Lightning and the data/model code are imported inside the job, so ``--help``
answers at once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from softlabel._conf import CONF_DIR

__all__ = ["CONF_DIR", "build_cache", "main"]


def _required(cfg: DictConfig, key: str, hint: str, *, name: str | None = None) -> Any:
    """``cfg[key]``, or a ValueError naming the key when it is missing or null."""
    if OmegaConf.is_missing(cfg, key) or cfg.get(key) is None:
        raise ValueError(f"{name or key} is not set: {hint}")
    return cfg[key]


def _check_options(cfg: DictConfig) -> None:
    """Fail on bad options before the data and the teacher are loaded."""
    from softlabel.cache.format import KINDS, VALUE_DTYPES

    if cfg.kind not in KINDS:
        raise ValueError(f"kind={cfg.kind!r} is not allowed; use one of {KINDS}")
    if cfg.dtype not in VALUE_DTYPES:
        raise ValueError(f"dtype={cfg.dtype!r} is not allowed; use one of {VALUE_DTYPES}")
    if cfg.kind == "topk" and (not isinstance(cfg.k, int) or cfg.k < 1):
        raise ValueError(f"k={cfg.k!r} must be a positive integer for kind=topk")
    if not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        raise ValueError(f"batch_size={cfg.batch_size!r} must be a positive integer")


def _is_text(cfg: DictConfig) -> bool:
    return str((cfg.get("data") or {}).get("_target_", "")).endswith("TextDataModule")


def build_cache(cfg: DictConfig) -> Path:
    """Run ``cfg.teacher`` over every index of ``cfg.data`` and write the cache at ``cfg.out``."""
    teacher_cfg = cfg.teacher
    kind = teacher_cfg.get("kind", "live")
    if kind != "live":
        raise ValueError(
            f"teacher.kind={kind!r}: softlabel-cache needs a teacher model and its checkpoint, "
            "e.g. teacher=mlp_large teacher.checkpoint=PATH"
        )
    if _is_text(cfg):
        out = _required(cfg, "out", "give out=DIR, the cache directory to write")
        _check_options(cfg)
        return _build_sequence_cache(cfg, out)
    checkpoint = _required(
        teacher_cfg,
        "checkpoint",
        "give teacher.checkpoint=PATH to the trained teacher's weights",
        name="teacher.checkpoint",
    )
    out = _required(cfg, "out", "give out=DIR, the cache directory to write")
    _check_options(cfg)

    import torch

    from softlabel.modules.build import absolute_path, build_datamodule, build_model
    from softlabel.modules.checkpoints import check_output_dim, file_sha256, load_weights

    out_path = Path(absolute_path(out))
    checkpoint_path = absolute_path(checkpoint)
    if not os.path.exists(checkpoint_path):  # a directory: load_weights says so
        raise FileNotFoundError(
            f"teacher checkpoint not found: {checkpoint_path!r} (from teacher.checkpoint={checkpoint!r})"
        )
    datamodule = build_datamodule(cfg)
    if datamodule.task != "multiclass":
        raise ValueError(
            f"data task={datamodule.task!r}: a teacher cache holds multiclass logits (K >= 2)"
        )
    num_classes = int(datamodule.num_classes)
    teacher = build_model(teacher_cfg.model, datamodule)
    load_weights(
        teacher,
        checkpoint_path,
        role="teacher",
        trust_checkpoint=teacher_cfg.get("trust_checkpoint", False),
    )
    check_output_dim(teacher, datamodule.input_shape, num_classes, role="teacher")
    device = torch.device(cfg.device)
    teacher.to(device).eval()

    recorded = OmegaConf.to_container(teacher_cfg, resolve=True)
    assert isinstance(recorded, dict)
    recorded["checkpoint"] = checkpoint_path
    return _write(
        cfg,
        out_path,
        datamodule,
        teacher,
        device,
        num_classes,
        file_sha256(checkpoint_path),
        recorded,
    )


def _write(
    cfg: DictConfig,
    out_path: Path,
    datamodule: Any,
    teacher: Any,
    device: Any,
    num_classes: int,
    teacher_sha256: str,
    recorded: dict[str, Any],
    row_shape: tuple[int, ...] = (),
) -> Path:
    """Run ``teacher`` over every item of ``datamodule.full_dataset()`` (in index order)
    and commit its outputs as the cache at ``out_path``."""
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
    ) as writer:
        batches = track(
            loader, total=len(loader), description="teacher logits", disable=not cfg.progress
        )
        with torch.inference_mode():
            for x, _, index in batches:
                writer.write(index, teacher(x.to(device)).float().cpu())
        return writer.commit()


def _build_sequence_cache(cfg: DictConfig, out: str) -> Path:
    """A causal-LM teacher's logits at every position of every block of ``data=text``:
    rows of shape (block_size, V) per dataset index (dense), or the top-k ids, their
    log-probabilities and the log tail mass per position."""
    import torch

    from softlabel.modules.build import absolute_path, build_datamodule
    from softlabel.modules.lm_build import frozen_lm

    out_path = Path(absolute_path(out))
    datamodule = build_datamodule(cfg)
    teacher, record = frozen_lm(cfg.teacher, datamodule, "teacher")
    device = torch.device(cfg.device)
    teacher.to(device).eval()
    recorded = OmegaConf.to_container(cfg.teacher, resolve=True)
    assert isinstance(recorded, dict)
    recorded.update({k: v for k, v in record.items() if not k.endswith("sha256")})
    return _write(
        cfg,
        out_path,
        datamodule,
        teacher,
        device,
        int(teacher.vocab_size),
        record["teacher_sha256"],
        recorded,
        row_shape=tuple(datamodule.input_shape),
    )


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="cache")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: write the cache and print what was written."""
    from softlabel.cache.reader import TeacherCache

    cache = TeacherCache.open(build_cache(cfg))
    print(f"wrote {cache!r}: {cache.nbytes} bytes")


if __name__ == "__main__":
    main()
