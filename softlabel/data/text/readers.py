"""Documents from text files: ``.txt`` (one per file), ``.jsonl`` (one per line, a string
field) and ``.parquet`` (one per row, a string column), as UTF-8 bytes kept exactly as
written."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["SUFFIXES", "expand_files", "read_documents"]

SUFFIXES = (".txt", ".jsonl", ".parquet")


def expand_files(files: Any) -> list[Path]:
    """The files named by ``files``: a path, a glob pattern (``**`` recurses) or a list of
    them, in the order given, each pattern's matches sorted (directories left out)."""
    entries = [files] if isinstance(files, str | os.PathLike) else list(files)
    if not entries:
        raise ValueError("files=[]; give a path, a glob pattern or a list of them")
    paths: list[Path] = []
    seen: dict[Path, str] = {}
    for entry in entries:
        text = os.path.expanduser(os.fspath(entry))
        if glob.has_magic(text):
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
            matches = [m for m in matches if m.is_file()]
            if not matches:
                raise FileNotFoundError(f"files: the pattern {str(entry)!r} matches no file")
        else:
            path = Path(text)
            if path.is_dir():
                raise IsADirectoryError(
                    f"files: {str(entry)!r} is a directory; give its files, e.g. "
                    f"'{os.path.join(str(entry), '*.txt')}'"
                )
            if not path.is_file():
                raise FileNotFoundError(f"files: {str(entry)!r} does not exist")
            matches = [path]
        for path in matches:
            key = path.resolve()
            if key in seen:
                raise ValueError(
                    f"files: {str(path)!r} is named twice (by {seen[key]!r} and "
                    f"{str(entry)!r}); its documents would be in the corpus twice"
                )
            seen[key] = str(entry)
            paths.append(path)
    return paths


def _utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ValueError(
            f"{where}: not valid UTF-8 at byte offset {error.start} (line {line}): {error.reason}"
        ) from None


def _read_txt(path: Path) -> list[bytes]:
    data = path.read_bytes()
    _utf8(data, str(path))
    return [data]


def _encoded(text: str, where: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as error:  # a lone surrogate, e.g. "\ud800" in JSON
        raise ValueError(f"{where}: the text holds a lone surrogate ({error.reason})") from None


def _read_jsonl(path: Path, field: str) -> list[bytes]:
    text = _utf8(path.read_bytes(), str(path))
    documents = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{where}: a line must be a JSON object, got {type(record).__name__}")
        if field not in record:
            raise ValueError(
                f"{where}: no field text_field={field!r}; the line's fields: {sorted(record)}"
            )
        value = record[field]
        if not isinstance(value, str):
            raise ValueError(
                f"{where}: text_field={field!r} holds a {type(value).__name__}; expected a string"
            )
        documents.append(_encoded(value, where))
    return documents


def _read_parquet(path: Path, field: str) -> list[bytes]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except (OSError, pa.ArrowException) as error:
        raise ValueError(f"{path}: cannot read as Parquet: {error}") from error
    if field not in names:
        raise ValueError(f"{path}: no column text_field={field!r}; the columns: {names}")
    column = pq.read_table(path, columns=[field]).column(field)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise ValueError(
            f"{path}: column text_field={field!r} has type {column.type}; expected strings"
        )
    values = column.to_pylist()
    if column.null_count:
        row = next(i for i, v in enumerate(values) if v is None)
        raise ValueError(f"{path}: column text_field={field!r} is null at row {row}")
    return [_encoded(v, f"{path}: row {row}") for row, v in enumerate(values)]


def read_documents(paths: Sequence[Path], text_field: str = "text") -> list[bytes]:
    """Every document of ``paths`` as UTF-8 bytes, file by file.

    ``.txt``: the whole file is one document. ``.jsonl``: one per non-blank line, the
    string field ``text_field``. ``.parquet``: one per row of the string column
    ``text_field``. Text is kept exactly as written (no stripping, no normalisation).
    """
    documents: list[bytes] = []
    for path in paths:
        suffix = path.suffix.lower()
        if suffix == ".txt":
            documents.extend(_read_txt(path))
        elif suffix == ".jsonl":
            documents.extend(_read_jsonl(path, text_field))
        elif suffix == ".parquet":
            documents.extend(_read_parquet(path, text_field))
        else:
            raise ValueError(
                f"files: {str(path)!r} has the extension {suffix or '(none)'!r}; "
                f"allowed: {', '.join(SUFFIXES)}"
            )
    return documents
