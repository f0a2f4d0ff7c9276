"""The user's own table (CSV or Parquet) as an `ArraySource`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from softlabel.data.source import ArraySource

_TASKS = ("auto", "multiclass", "binary")


_CSV_SUFFIXES = (".csv", ".tsv", ".txt")


def _read_table(path: Path):
    import pandas as pd

    if path.is_dir():
        raise IsADirectoryError(f"tabular: path={str(path)!r} is a directory, not a table file")
    if not path.is_file():
        raise FileNotFoundError(f"tabular: path={str(path)!r} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in _CSV_SUFFIXES:
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise ValueError(
            f"tabular: cannot read {str(path)!r} as a {suffix[1:]} table: "
            f"{type(error).__name__}: {error}"
        ) from error
    raise ValueError(f"tabular: path={str(path)!r}; allowed suffixes: .csv, .tsv, .parquet, .pq")


def _where(path: Path, row: int) -> str:
    """``row 3 (line 5)`` for a CSV with its header line, ``row 3`` otherwise (0-based rows)."""
    if path.suffix.lower() in _CSV_SUFFIXES:
        return f"row {row} (line {row + 2} of the file)"
    return f"row {row}"


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _show(value) -> str:
    """A cell as the user wrote it (``1.5``, ``inf``, ``'four'``), not numpy's repr."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _check_features(table, features: list[str], path: Path) -> np.ndarray:
    """The feature columns as float32, refusing non-numeric columns and values that are
    NaN, infinite or beyond the float32 range (naming the column, row and value)."""
    import pandas as pd

    non_numeric = [c for c in features if not pd.api.types.is_numeric_dtype(table[c])]
    if non_numeric:
        column = non_numeric[0]
        values = table[column]
        text = pd.to_numeric(values, errors="coerce").isna().to_numpy() & values.notna().to_numpy()
        example = (
            f": column {column!r} holds {_show(values.iloc[_first(text)])} at "
            f"{_where(path, _first(text))}"
            if text.any()
            else f" (column {column!r} has dtype {values.dtype})"
        )
        raise ValueError(
            f"tabular: feature columns {non_numeric} in {path} are not numeric{example}"
        )
    limit = float(np.finfo(np.float32).max)
    for column in features:
        values = table[column].to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isnan(values).any():
            row = _first(np.isnan(values))
            raise ValueError(
                f"tabular: columns [{column!r}] in {path} contain missing values (NaN); "
                f"first at {_where(path, row)}"
            )
        outside = ~(np.abs(values) <= limit)
        if outside.any():
            row = _first(outside)
            kind = "infinite" if np.isinf(values[row]) else "beyond the float32 range (3.4e38)"
            raise ValueError(
                f"tabular: feature column {column!r} in {path} holds "
                f"{_show(table[column].iloc[row])} at {_where(path, row)}, which is {kind} "
                f"({int(outside.sum())} such value(s)); features must be finite float32 numbers"
            )
    return table[features].to_numpy(dtype=np.float32)


def _check_labels(values, label: str, path: Path) -> np.ndarray:
    """The label column as an array whose unique values are the classes: integers, names
    or booleans; a fractional number (which would become a class of its own) is refused."""
    import pandas as pd

    if values.isna().any():
        row = _first(values.isna().to_numpy())
        raise ValueError(
            f"tabular: columns [{label!r}] in {path} contain missing values (NaN); first at "
            f"{_where(path, row)}"
        )
    if pd.api.types.is_float_dtype(values):
        numbers = values.to_numpy(dtype=np.float64)
        fractional = ~np.isfinite(numbers) | (numbers != np.round(numbers))
        if fractional.any():
            row = _first(fractional)
            raise ValueError(
                f"tabular: label column {label!r} in {path} holds the non-integer value "
                f"{_show(values.iloc[row])} at {_where(path, row)} ({int(fractional.sum())} such "
                "value(s)); labels must be class names or whole numbers, each distinct value "
                "being a class"
            )
        return numbers.astype(np.int64)  # 1.0 and 1 are the same class
    array = values.to_numpy()
    if array.dtype == object:
        kinds = {type(v) for v in array}
        if len(kinds) > 1:
            names = sorted(kind.__name__ for kind in kinds)
            raise ValueError(
                f"tabular: label column {label!r} in {path} mixes value types {names}; "
                "use one type for all class labels"
            )
    return array


def tabular(
    path: str | Path, features: Sequence[str], label: str, task: str = "auto"
) -> ArraySource:
    """Rows of ``path`` (CSV or Parquet) with numeric ``features`` and a ``label`` column.

    Labels are mapped to ``0..K-1`` in sorted order of their unique values; the original
    values are kept in ``source.classes``. ``task="auto"`` and ``"multiclass"`` give a
    multiclass task (also for K = 2); ``task="binary"`` needs exactly 2 label values.

    The data is checked as it is read, and never altered: a file without data rows, a
    non-numeric feature, a missing, infinite or float32-overflowing feature value, or a
    missing or non-integer numeric label raises ValueError naming the file, the column and
    the first bad row.
    """
    if task not in _TASKS:
        raise ValueError(f"tabular: task={task!r}; allowed: {_TASKS}")
    if isinstance(features, str):
        raise TypeError(f"tabular: features={features!r} must be a list of column names")
    features = list(features)
    if not features:
        raise ValueError("tabular: features is empty; name at least one feature column")
    path = Path(path).expanduser()
    table = _read_table(path)
    missing = [column for column in [*features, label] if column not in table.columns]
    if missing:
        raise ValueError(
            f"tabular: columns {missing} not found in {path}; available: {list(table.columns)}"
        )
    if len(table) == 0:
        raise ValueError(
            f"tabular: {path} has no data rows (only the header {list(table.columns)})"
        )
    X = _check_features(table, features, path)
    labels = _check_labels(table[label], label, path)
    values, y = np.unique(labels, return_inverse=True)
    if len(values) < 2:
        raise ValueError(f"tabular: label column {label!r} has {len(values)} distinct value(s)")
    if task == "binary" and len(values) != 2:
        raise ValueError(
            f"tabular: task='binary' needs 2 label values; column {label!r} has {len(values)}"
        )
    return ArraySource(
        name=path.stem,
        X=X,
        y=y.reshape(-1),
        num_classes=len(values),
        input_shape=(len(features),),
        task="binary" if task == "binary" else "multiclass",
        classes=tuple(v.item() if hasattr(v, "item") else v for v in values),
    )
