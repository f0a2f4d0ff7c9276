"""Composing small, fast ``softlabel-train`` configs for the tests (shared by several files)."""

from __future__ import annotations

from hydra import compose, initialize_config_dir

from softlabel.train import CONF_DIR

#: A 200-sample digits run with a 16-unit student and no progress output.
QUICK = [
    "data.subset=200",
    "student.hidden=[16]",
    "callbacks.progress_bar.refresh_rate=0",
    "trainer.enable_model_summary=false",
    "trainer.num_sanity_val_steps=0",
]


def compose_train(*overrides: str):
    """The composed ``train`` config with ``overrides`` (nothing added)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))
