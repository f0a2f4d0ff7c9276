"""Small file helpers: log tails (atomic writes live in ``softlabel._io``)."""

from __future__ import annotations

import os
from pathlib import Path

from softlabel._io import atomic_write, atomic_write_text

__all__ = ["atomic_write", "atomic_write_text", "tail_lines"]


def tail_lines(path: str | os.PathLike, lines: int = 30) -> str:
    """The last ``lines`` lines of a text file ("" when the file does not exist)."""
    if lines < 0:
        raise ValueError(f"lines must be >= 0, got {lines}")
    path = Path(path)
    if not path.is_file() or lines == 0:
        return ""
    text = path.read_text(encoding="utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])
