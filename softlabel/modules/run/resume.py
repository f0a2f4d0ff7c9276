"""Checking that ``ckpt_path`` can resume this run, before Lightning reads it: a readable
file, a full Lightning training checkpoint (optimizer and scheduler states included), with
student weights that fit the configured student."""

from __future__ import annotations

import os
from typing import Any

import torch
from omegaconf import DictConfig

from softlabel.modules.build import absolute_path
from softlabel.modules.rundir import CHECKPOINT_DIR
from softlabel.modules.soft_label_module import PROVIDER_PREFIX

__all__ = ["read_resume_checkpoint"]


def read_resume_checkpoint(cfg: DictConfig, module: Any) -> tuple[str, int]:
    """``(path, global_step)`` of ``cfg.ckpt_path`` after checking that it can resume this
    run: readable, a full Lightning training checkpoint, with student weights that fit."""
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
