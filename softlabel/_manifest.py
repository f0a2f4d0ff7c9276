"""The files a manifest lists: the one rule every manifest reader applies.

A manifest (``manifest.json`` of a prediction store version or of a teacher cache) maps
file names, relative to its directory, to what was recorded of each file when it was
written (its hashes). A reader trusts the files only through those records, so before it
opens anything it checks that

- every name is a normalised relative POSIX path: not empty, not absolute, no ``.``,
  ``..`` or empty component, no backslash or NUL (``probs.npy`` and ``a/b.npy`` are
  allowed; ``../x.npy``, ``/x.npy``, ``./x.npy``, ``a//b.npy`` are not);
- every listed file, symlinks resolved, lies inside the directory (a symlink leading out
  is refused);
- the names are exactly the data files the reader opens: an empty or partial ``files``
  map (a file that would be opened without being hashed) and an entry the reader does not
  open (a record that checks nothing) are refused.

The reader then compares every listed file with its recorded hashes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = ["ManifestFilesError", "check_listed_files", "listed_file_paths"]

ALLOWED = (
    "file names must be normalised relative paths inside the manifest's directory "
    "(no absolute path, no '.', '..' or empty component, no backslash)"
)


class ManifestFilesError(ValueError):
    """A manifest's ``files`` map does not follow the rule of this module."""


def _name_problem(name: Any) -> str | None:
    """Why ``name`` is not an allowed file name (None when it is)."""
    if not isinstance(name, str) or not name:
        return "is not a non-empty string"
    if "\\" in name or "\0" in name:
        return "contains a backslash or NUL"
    if name.startswith("/") or PurePosixPath(name).is_absolute():
        return "is an absolute path"
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "has a '.', '..' or empty component"
    return None


def check_listed_files(files: Any, opened: Iterable[str], *, manifest: str) -> None:
    """Raise :class:`ManifestFilesError` unless ``files`` (a manifest's map of file name
    to record) has allowed names, exactly the names in ``opened``.

    ``manifest`` names the manifest file in the error.
    """
    opened = sorted(opened)
    if not isinstance(files, Mapping):
        raise ManifestFilesError(
            f"manifest {manifest}: 'files' must map each data file to its record, got "
            f"{type(files).__name__}; this reader opens {opened}"
        )
    for name in files:
        problem = _name_problem(name)
        if problem is not None:
            raise ManifestFilesError(
                f"manifest {manifest}: files entry {name!r} {problem}; {ALLOWED}"
            )
    missing = sorted(set(opened) - set(files))
    unknown = sorted(set(files) - set(opened))
    if missing or unknown:
        raise ManifestFilesError(
            f"manifest {manifest}: files lists {sorted(files)}, but the reader opens exactly "
            f"{opened}: not listed (would be read unchecked) {missing}, listed but never read "
            f"{unknown}; every file read must be listed with its hash, and nothing else"
        )


def listed_file_paths(
    directory: str | os.PathLike[str], files: Any, opened: Iterable[str], *, manifest: str
) -> dict[str, Path]:
    """:func:`check_listed_files`, then the path of each listed file with symlinks resolved;
    :class:`ManifestFilesError` if one of them lies outside ``directory`` (resolved too).

    The files need not exist (the reader says which is missing when it opens it).
    """
    opened = list(opened)
    check_listed_files(files, opened, manifest=manifest)
    root = Path(directory).resolve()
    paths = {}
    for name in opened:
        path = (root / name).resolve()
        if not path.is_relative_to(root):
            raise ManifestFilesError(
                f"manifest {manifest}: files entry {name!r} resolves to {str(path)!r}, outside "
                f"{str(root)!r} (a symlink leading out of the directory); {ALLOWED}"
            )
        paths[name] = path
    return paths
