"""The former causal-LM builders, kept as names for old imports: models, frozen models and
reference providers are built by the general builders for every data kind
(:mod:`softlabel.modules.build`, :mod:`softlabel.modules.frozen`), the model export is in
:mod:`softlabel.modules.run.outputs`."""

from __future__ import annotations

from typing import Any

from torch import nn

from softlabel.modules.build import build_model as build_lm_model
from softlabel.modules.build import build_reference_provider as build_lm_reference_provider
from softlabel.modules.build import plain
from softlabel.modules.frozen import directory_sha256, frozen_model
from softlabel.modules.run.outputs import HF_MODEL_DIR, save_hf_model

__all__ = [
    "HF_MODEL_DIR",
    "build_lm_model",
    "build_lm_reference_provider",
    "directory_sha256",
    "frozen_lm",
    "save_hf_model",
]

_KEYS = ("model", "checkpoint", "pretrained", "dtype", "trust_checkpoint")


def frozen_lm(node: Any, datamodule: Any, role: str) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`softlabel.modules.frozen.frozen_model` of a config node."""
    return frozen_model(role, datamodule, **{k: plain(node[k]) for k in _KEYS if k in node})
