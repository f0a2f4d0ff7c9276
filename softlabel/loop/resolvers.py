"""OmegaConf resolvers used by ``conf/loop.yaml`` (imports omegaconf only)."""

from __future__ import annotations

from omegaconf import OmegaConf

__all__ = ["register_resolvers"]


def _add(*values: object) -> int:
    """``${loop.add:a,b,...}``: the integer sum (e.g. the chunks needed for N versions)."""
    return sum(int(v) for v in values)  # type: ignore[call-overload]


def register_resolvers() -> None:
    """Register ``loop.add`` (idempotent)."""
    if not OmegaConf.has_resolver("loop.add"):
        OmegaConf.register_new_resolver("loop.add", _add)
