"""The default corpus of ``data=text``: the ``.py`` files of this Python's standard library,
one document each."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

__all__ = ["stdlib_document", "stdlib_sources"]


def stdlib_sources() -> tuple[Path, list[Path]]:
    """``(directory, files)``: the ``.py`` files of this Python's standard library
    (``sysconfig.get_paths()["stdlib"]``), sorted by relative path, without
    ``site-packages``, ``dist-packages`` and ``__pycache__``."""
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise FileNotFoundError(
            f"files=None: the standard library directory {root} does not exist; give files"
        )
    skip = {"site-packages", "dist-packages", "__pycache__"}
    found = []
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = [d for d in subdirectories if d not in skip]
        found += [Path(directory, n) for n in names if n.endswith(".py")]
    found.sort(key=lambda p: p.relative_to(root).as_posix())
    return root, found


def stdlib_document(path: Path) -> bytes | None:
    """The file's bytes, or ``None`` when they are not UTF-8 (a few test fixtures written
    in other encodings)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return data
