"""``threads``, the setting every ``softlabel-*`` app shares: ``torch.set_num_threads`` of
the work it runs (null: torch's default). Imports nothing heavy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["check_threads"]


def check_threads(cfg: Mapping[str, Any]) -> int | None:
    """``cfg.threads``: None (torch's default) or an integer >= 1."""
    value = cfg.get("threads")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"threads={value!r}; allowed: null (torch's default thread count) or an integer "
            ">= 1 (torch.set_num_threads), e.g. threads=1"
        )
    return value
