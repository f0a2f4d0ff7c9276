"""``softlabel-train``: train one student with a soft-target loss (Hydra app).

    softlabel-train                                   # digits, MLP, label smoothing 0.1
    softlabel-train target=kd teacher=mlp_large teacher.checkpoint=runs/teacher/checkpoints/best.ckpt
    softlabel-train -m target=hard,ls seed=0,1,2      # a sweep

Lightning, torchmetrics and the data/model code are imported inside the job, so
``--help`` and ``--cfg job`` answer at once.
"""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig

from softlabel._conf import CONF_DIR
from softlabel._hydra_app import hydra_app

__all__ = ["CONF_DIR", "main", "train"]


def train(cfg: DictConfig, output_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Run the job described by ``cfg``, writing its files under ``output_dir``.

    Returns the ``metrics.json`` content (written by global rank 0 only).
    """
    from softlabel.modules.run import run_training

    return run_training(cfg, os.fspath(output_dir))


def _route_lightning_logs_to_hydra() -> None:
    """Lightning adds its own console handler and also propagates to the root logger, which
    Hydra configured (console + ``train.log``): drop Lightning's so each line prints once."""
    import logging

    import lightning  # noqa: F401 - installs the handler we remove

    if logging.getLogger().hasHandlers():
        lightning_logger = logging.getLogger("lightning")
        for handler in list(lightning_logger.handlers):
            lightning_logger.removeHandler(handler)


def _job(cfg: DictConfig) -> float | None:
    """The Hydra task: returns the best checkpoint's validation monitor (for sweepers)."""
    from hydra.core.hydra_config import HydraConfig

    _route_lightning_logs_to_hydra()
    result = train(cfg, HydraConfig.get().runtime.output_dir)
    value = (result.get("best") or {}).get(result.get("monitor", ""))
    return float(value) if value is not None else None


main = hydra_app(_job, config_name="train")
"""Console entry point ``softlabel-train``: the config checked (unknown keys refused), then
the Hydra app (conf/train.yaml)."""


if __name__ == "__main__":
    main()
