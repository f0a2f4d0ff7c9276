"""Versioned self-correction loop (ReLoop): prediction store, streams, flip metrics, runner.

Every name loads on first access, so importing the package (or the ``softlabel-loop``
entry point) stays cheap; the flip metrics import torchmetrics and the store-backed
reference provider imports Lightning.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CTRColumnSpec",
    "CTRFeatureEncoder",
    "Chunk",
    "ChunkDataset",
    "ClickLogGenerator",
    "ErrorReductionRate",
    "NegativeFlipRate",
    "PredictionStore",
    "StaleStoreError",
    "StoredPredictions",
    "StoredVersion",
    "Stream",
    "VersionManifest",
    "clicklog_stream",
    "ctr_log_stream",
    "digits_stream",
    "stable_bucket",
]

_LAZY = {
    "CTRColumnSpec": "softlabel.loop.ctr_log",
    "CTRFeatureEncoder": "softlabel.loop.ctr_log",
    "Chunk": "softlabel.loop.stream",
    "ChunkDataset": "softlabel.loop.stream",
    "ClickLogGenerator": "softlabel.loop.clicklog",
    "ErrorReductionRate": "softlabel.loop.flips",
    "NegativeFlipRate": "softlabel.loop.flips",
    "PredictionStore": "softlabel.loop.store",
    "StaleStoreError": "softlabel.loop.store",
    "StoredPredictions": "softlabel.loop.references",
    "StoredVersion": "softlabel.loop.store",
    "Stream": "softlabel.loop.stream",
    "VersionManifest": "softlabel.loop.store",
    "clicklog_stream": "softlabel.loop.clicklog",
    "ctr_log_stream": "softlabel.loop.ctr_log",
    "digits_stream": "softlabel.loop.digits",
    "stable_bucket": "softlabel.loop.ctr_log",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
